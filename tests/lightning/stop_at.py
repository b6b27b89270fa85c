"""A Lightning callback the resume tests hand to a real ``paralleldecode fit`` process
(``--trainer.callbacks``): it sends the process a real signal when the given optimizer step
is about to start, i.e. right after the checkpoint of the step before it was written."""

from __future__ import annotations

import os
import signal

from lightning.pytorch import Callback


class SignalAtStep(Callback):
    """Send ``signal_name`` (``SIGKILL``, ``SIGTERM``) at the start of the batch after
    ``step`` optimizer steps, from rank 0: to this process, or with ``group`` to its whole
    process group (every rank, as a scheduler stops a job)."""

    def __init__(self, step: int, signal_name: str = "SIGKILL", group: bool = False) -> None:
        self.step, self.signum, self.group = step, getattr(signal, signal_name), group

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and trainer.global_rank == 0:
            if self.group:
                os.killpg(os.getpgid(0), self.signum)
            else:
                os.kill(os.getpid(), self.signum)
