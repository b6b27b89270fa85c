"""The one decoding engine and the batch layouts it decodes."""

from paralleldecode.decoding.engine import (
    DecodingEngine,
    GenerationConfig,
    GenerationResult,
    StreamResult,
)
from paralleldecode.decoding.layout import PAD, SHARED, Layout, independent_rows

__all__ = [
    "DecodingEngine", "GenerationConfig", "GenerationResult", "StreamResult",
    "Layout", "independent_rows", "PAD", "SHARED",
]
