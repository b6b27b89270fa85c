"""The one decoding engine and the batch layouts it decodes."""

from paralleldecode.decoding.cache import RowCache
from paralleldecode.decoding.columnar import (
    column_mask,
    columnar_batch,
    columnar_layout,
    columnar_loss,
    columnar_prompts,
    columnar_segments,
    linearise,
)
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
    layout_mask,
    shared_prefix,
    split_common_prefix,
    stack_layouts,
)

__all__ = [
    "DecodingEngine", "GenerationConfig", "GenerationResult", "StreamResult",
    "Layout", "RowCache", "independent_rows", "shared_prefix", "split_common_prefix", "stack_layouts",
    "PAD", "SHARED",
    "layout_mask", "column_mask", "columnar_batch", "columnar_layout", "columnar_loss",
    "columnar_prompts", "columnar_segments", "linearise",
]
