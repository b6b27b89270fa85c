"""`TextBranchesDataModule`: plain text cut into multi-branch samples for columnar pretraining.

Each sample is one contiguous window of the tokenised text, ``background_length +
branch_count * seq_length`` tokens long: the first ``background_length`` tokens are the
shared background, the rest is cut into ``branch_count`` consecutive segments of
``seq_length`` tokens, one per branch. So the background is related text (as a context is
to its questions), branch 1 continues it directly and later branches continue further along
the same passage; ``background_length: 0`` trains branches with no background at all.

Batches are plain lists of ``{"background": [ids], "branches": [[ids], ...]}`` dicts; the
LightningModule lays them out (it owns the layout options, e.g. isolation). The text comes
from local files or a Hugging Face dataset id (read with ``datasets``, optionally streamed).
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any, Iterator

import lightning as L
from torchdata.stateful_dataloader import StatefulDataLoader

from datamodules.qa_groups import stateful_loader
from paralleldecode.data.records import DataError

TEXT_SUFFIXES = (".txt", ".tokens", ".md", ".text", ".raw")
_UNSET_VAR = re.compile(r"\$\{?(\w+)\}?")


def expand_path(text: str) -> str:
    """``~`` and environment variables expanded.

    Raises:
        DataError: the path names an environment variable that is not set (``expandvars``
            would silently leave ``$VAR`` in place and the file would just be "missing").
    """
    out = os.path.expandvars(os.path.expanduser(text))
    unset = [m.group(1) for m in _UNSET_VAR.finditer(out) if m.group(1) not in os.environ]
    if unset:
        raise DataError(f"data.source {text!r} uses the environment variable(s) {', '.join(unset)}, "
                        "which are not set; set them or give the path directly")
    return out


def looks_like_path(text: str) -> bool:
    """A local path rather than a hub id (``owner/name``): it exists, starts like a path,
    has a file suffix, or has more than one ``/``."""
    return (os.path.exists(text) or text.startswith((".", "/", "~", "$"))
            or Path(text).suffix.lower() in TEXT_SUFFIXES or text.count("/") > 1)


def read_local_text(path: str) -> list[str]:
    """The documents of a text file, or of every text file (``*.txt``, ``*.tokens``, ...)
    in a folder, sorted by name; one file is one document.

    Raises:
        DataError: the path does not exist, or a folder holds no text file.
    """
    p = Path(path)
    if p.is_file():
        files = [p]
    elif p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise DataError(f"data.source: folder {p} holds no text file ({', '.join(TEXT_SUFFIXES)})")
    else:
        raise DataError(f"data.source: {p} does not exist (give a text file, a folder of text files "
                        "or a Hugging Face dataset id)")
    return [f.read_text(encoding="utf-8", errors="replace") for f in files]


def load_hub_rows(dataset_id: str, config: str | None, split: str, streaming: bool):
    """``datasets.load_dataset`` with one clear error for every way it can fail.

    Raises:
        DataError: the dataset cannot be reached or read (offline, unknown id or config).
    """
    try:
        from datasets import load_dataset

        return load_dataset(dataset_id, config, split=split, streaming=streaming)
    except Exception as err:  # noqa: BLE001 - any failure becomes one clear message
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(
            f"data.source {dataset_id!r} (hub_config {config!r}, hub_split {split!r}) could not be loaded "
            f"from the Hugging Face hub: {first}. Offline, give a local text file instead, e.g. "
            "${PARALLELDECODE_DATA_DIR}/wikitext-2/wiki.valid.tokens (a local path that does not "
            "exist is read as a hub id)"
        ) from err


def hub_documents(dataset_id: str, config: str | None, split: str, streaming: bool,
                  text_field: str) -> Iterator[str]:
    """Texts of a Hugging Face dataset, lazily when streaming.

    Raises:
        DataError: see :func:`load_hub_rows`; or the rows have no text in ``text_field``.
    """
    rows = load_hub_rows(dataset_id, config, split, streaming)
    for i, row in enumerate(rows):
        if text_field not in row:
            raise DataError(f"data.text_field {text_field!r} is not a field of {dataset_id!r}; "
                            f"its rows have: {', '.join(row)}")
        if i == 0 and not isinstance(row[text_field], str):
            raise DataError(f"data.text_field {text_field!r} of {dataset_id!r} is not text "
                            f"({type(row[text_field]).__name__})")
        yield row[text_field]


def cut_samples(ids: list[int], background_length: int, branch_count: int,
                seq_length: int) -> list[dict[str, Any]]:
    """Non-overlapping windows of ``ids``, each cut into a background and branches.

    Returns:
        ``{"background": [background_length ids], "branches": [branch_count x [seq_length
        ids]]}`` per window, in text order; a final window too short for a whole sample is
        left out.
    """
    width = background_length + branch_count * seq_length
    out = []
    for start in range(0, len(ids) - width + 1, width):
        window = ids[start:start + width]
        out.append({
            "background": window[:background_length],
            "branches": [window[background_length + b * seq_length: background_length + (b + 1) * seq_length]
                         for b in range(branch_count)],
        })
    return out


class TextBranchesDataModule(L.LightningDataModule):
    """Multi-branch samples cut from plain text, for ``ColumnarModule`` in ``pretrain`` mode.

    Args:
        source: a text file, a folder of text files, or a Hugging Face dataset id (e.g.
            ``HuggingFaceFW/fineweb-edu``); ``~`` and environment variables are expanded
            (e.g. ``${PARALLELDECODE_DATA_DIR}/wikitext-2/wiki.valid.tokens``).
        tokenizer_name: whose tokenizer cuts the text (any model name
            ``paralleldecode.models.loading.load_tokenizer`` takes); None takes the fitted
            model's ``model_name``, so the two cannot disagree.
        branch_count: branches per sample.
        seq_length: tokens per branch.
        background_length: tokens of shared background before the branches (0: none).
        hub_config: the dataset's configuration (e.g. ``sample-10BT``), hub sources only.
        hub_split: the split to read, hub sources only.
        streaming: stream the hub dataset instead of downloading it whole (needs
            ``max_samples``).
        text_field: the column holding the text, hub sources only.
        max_samples: keep this many samples (a seeded random choice among all windows of a
            local text; the first ones of a streamed dataset); None keeps all.
        seed: seed of the sample choice and order.
        batch_size: samples per batch (per device).
        name: the text's name in trained checkpoint paths; None derives it from ``source``
            (the folder of a file, e.g. ``wikitext-2``; the last part of a hub id).
    """

    def __init__(
        self,
        source: str = "${PARALLELDECODE_DATA_DIR}/wikitext-2/wiki.valid.tokens",
        tokenizer_name: str | None = None,
        branch_count: int = 4,
        seq_length: int = 32,
        background_length: int = 64,
        hub_config: str | None = None,
        hub_split: str = "train",
        streaming: bool = False,
        text_field: str = "text",
        max_samples: int | None = None,
        seed: int = 0,
        batch_size: int = 2,
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        for option, value, low in (("branch_count", branch_count, 1), ("seq_length", seq_length, 2),
                                   ("background_length", background_length, 0), ("batch_size", batch_size, 1)):
            if value < low:
                raise DataError(f"data.{option} must be >= {low}, got {value}")
        if max_samples is not None and max_samples < 1:
            raise DataError(f"data.max_samples must be >= 1 or null, got {max_samples}")
        if streaming and max_samples is None:
            raise DataError("data.streaming reads an unbounded stream: set data.max_samples")
        if not source or not str(source).strip():
            raise DataError("data.source is empty; give a text file, a folder or a hub dataset id")
        self.samples: list[dict[str, Any]] | None = None

    @property
    def sample_tokens(self) -> int:
        h = self.hparams
        return h.background_length + h.branch_count * h.seq_length

    @property
    def dataset_name(self) -> str:
        """A short name of the text (``wikitext-2``, ``fineweb-edu``), for checkpoint paths."""
        if self.hparams.name:
            return self.hparams.name
        src = str(self.hparams.source).rstrip("/\\")
        if looks_like_path(src):
            p = Path(src)
            return p.parent.name if p.suffix else p.name
        return src.rsplit("/", 1)[-1]

    def _tokenizer_name(self) -> str:
        if self.hparams.tokenizer_name:
            return self.hparams.tokenizer_name
        module = self.trainer.lightning_module if self.trainer is not None else None
        name = module.hparams.get("model_name") if module is not None else None
        if not name:
            raise DataError("data.tokenizer_name is not set and the model has no model_name; name the "
                            "tokenizer's model")
        return name

    def _is_local(self) -> bool:
        src = str(self.hparams.source)
        return looks_like_path(src) or "$" in src

    def _documents(self) -> tuple[Iterator[str], bool]:
        """The texts, and whether they come from the hub."""
        h = self.hparams
        if self._is_local():
            return iter(read_local_text(expand_path(str(h.source)))), False
        return hub_documents(h.source, h.hub_config, h.hub_split, h.streaming, h.text_field), True

    def prepare_data(self) -> None:
        """Download a hub dataset (not streamed) into the ``datasets`` cache once, on one
        process per node, before every rank reads it in :meth:`setup`."""
        h = self.hparams
        if not self._is_local() and not h.streaming:
            load_hub_rows(h.source, h.hub_config, h.hub_split, streaming=False)

    def setup(self, stage: str | None = None) -> None:
        if self.samples is not None:
            return
        from paralleldecode.models.loading import load_tokenizer

        h = self.hparams
        docs, from_hub = self._documents()
        tokenizer = load_tokenizer(self._tokenizer_name())
        sep = tokenizer.eos_token_id
        need = None if h.max_samples is None or not from_hub else h.max_samples * self.sample_tokens
        ids: list[int] = []
        for doc in docs:
            if not doc.strip():
                continue
            # Long files are tokenised in blocks cut at line ends: one call on megabytes of
            # text is slow and some tokenizers warn about the length.
            for block in _blocks(doc):
                ids.extend(tokenizer(block, add_special_tokens=False)["input_ids"])
            if sep is not None:
                ids.append(sep)  # files and dataset rows are separate texts
            if need is not None and len(ids) >= need:
                break
        if not ids:
            raise DataError(f"data.source {h.source!r} holds no text (empty or whitespace only)")
        samples = cut_samples(ids, h.background_length, h.branch_count, h.seq_length)
        if not samples:
            raise DataError(
                f"data.source {h.source!r} gives {len(ids)} tokens, fewer than one sample needs "
                f"({self.sample_tokens} = background_length {h.background_length} + branch_count "
                f"{h.branch_count} x seq_length {h.seq_length})"
            )
        rng = random.Random(h.seed)
        rng.shuffle(samples)
        if h.max_samples is not None:
            samples = samples[:h.max_samples]
        self.samples = samples

    def train_dataloader(self) -> StatefulDataLoader:
        """Shuffled batches (order set by ``seed``; under DDP each rank gets a share) from a
        loader whose position a checkpoint keeps (see :func:`~datamodules.qa_groups.stateful_loader`)."""
        if self.samples is None:
            self.setup("fit")
        return stateful_loader(self.samples, self.hparams.batch_size, self.hparams.seed, self.trainer)


def _blocks(text: str, chars: int = 100_000) -> Iterator[str]:
    """``text`` in pieces of about ``chars`` characters, cut after a newline (so no word is
    split) when the text has one."""
    start = 0
    while start < len(text):
        end = min(len(text), start + chars)
        if end < len(text):
            cut = text.rfind("\n", start, end)
            end = cut + 1 if cut > start else end
        yield text[start:end]
        start = end
