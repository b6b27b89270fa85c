"""Registry of comparison strategies; importing this package registers the built-in ones."""

from paralleldecode.strategies import baselines, collab, columnar, trained  # noqa: F401  (registers them)
from paralleldecode.strategies.base import (
    ContextTooLongError,
    Cost,
    GroupRun,
    QuestionResult,
    RunContext,
    Strategy,
    StrategyUnavailable,
    UnknownStrategyError,
    get_strategy,
    register,
    strategy_names,
)

__all__ = [
    "ContextTooLongError", "Cost", "GroupRun", "QuestionResult", "RunContext", "Strategy", "StrategyUnavailable",
    "UnknownStrategyError", "get_strategy", "register", "strategy_names",
]
