"""The one decoding engine and the batch layouts it decodes."""

from paralleldecode.decoding.engine import (
    DecodingEngine,
    GenerationConfig,
    GenerationResult,
    StreamResult,
)
from paralleldecode.decoding.layout import (
    PAD,
    SHARED,
    Layout,
    independent_rows,
    shared_prefix,
    split_common_prefix,
)

__all__ = [
    "DecodingEngine", "GenerationConfig", "GenerationResult", "StreamResult",
    "Layout", "independent_rows", "shared_prefix", "split_common_prefix", "PAD", "SHARED",
]
