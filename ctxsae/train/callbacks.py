"""Lightning callbacks of a training run (``conf/callbacks``)."""

from __future__ import annotations

import time

from lightning.pytorch.callbacks import Callback


class Throughput(Callback):
    """Training tokens per second, timing only the training batches (not validation or checkpoints)."""

    def __init__(self):
        self.tokens, self.seconds, self._t0 = 0, 0.0, 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.seconds += time.perf_counter() - self._t0
        self.tokens += batch.x_BTD.shape[0] * batch.x_BTD.shape[1]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else float("nan")
