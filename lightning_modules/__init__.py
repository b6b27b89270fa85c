"""LightningModules: thin wiring of the `paralleldecode` library for fit and predict."""

from lightning_modules.columnar_module import ColumnarModule
from lightning_modules.crossbatch_module import CrossBatchModule
from lightning_modules.strategy_module import StrategyModule
from lightning_modules.writer import PredictionWriter

__all__ = ["ColumnarModule", "CrossBatchModule", "StrategyModule", "PredictionWriter"]
