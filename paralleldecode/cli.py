"""The ``paralleldecode`` command: a LightningCLI (``fit``, ``validate``, ``test``, ``predict``).

Model and data are chosen by ``class_path`` (any LightningModule / LightningDataModule
subclass), so ``configs/*.yaml`` pick e.g. ``lightning_modules.StrategyModule`` and
``datamodules.QAGroupsDataModule``. Models load in ``configure_model``, so ``--help`` and
config errors answer without touching weights.
"""

from __future__ import annotations

import os


def main() -> None:
    """Entry point of the ``paralleldecode`` console script."""
    build_cli()


def build_cli(args: list[str] | None = None, run: bool = True):
    """The ``LightningCLI``; ``args`` and ``run`` as in ``LightningCLI`` (tests pass both)."""
    # Quiet, offline-friendly defaults a user can still override from the environment.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    return LightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


if __name__ == "__main__":
    main()
