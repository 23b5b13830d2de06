"""Lightning callbacks of a training run (``conf/callbacks``)."""

from __future__ import annotations

import time

from lightning.pytorch.callbacks import Callback, RichProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import CustomBarColumn, CustomTimeColumn
from rich.progress import ProgressColumn, Task, TextColumn
from rich.text import Text


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


class _Count(ProgressColumn):
    """done/total and the rate, in the task's unit (tok for training, batches for validation)."""

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", "batches")
        total = f"{int(task.total):,}" if task.total not in (None, float("inf")) else "--"
        rate = f"{task.speed:,.0f} {unit}/s" if task.speed is not None else ""
        return Text(f"{int(task.completed):,}/{total} {unit}  {rate}", style="progress.download")


class TokenProgressBar(RichProgressBar):
    """The training bar in tokens: tokens done of the run's total (``max_tokens`` in whole steps), tokens per
    second, time elapsed and left, and the module's progress-bar metrics (FVU, L0); one bar for the whole run.

    Lightning's own bar counts the batches of an epoch and reads "Epoch 4/-2" when, as here, training is
    bounded by steps. Tokens are the step count times the datamodule's ``tokens_per_step``, so nothing is read
    from the device for them; the metrics are (``.item()``), so they refresh every ``trainer.log_every_n_steps``
    steps rather than every step.
    """

    def on_train_start(self, trainer, module) -> None:
        self.tokens_per_step = trainer.datamodule.tokens_per_step(trainer.world_size)
        super().on_train_start(trainer, module)

    def on_train_epoch_start(self, trainer, module) -> None:
        if self.is_enabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        self.refresh()

    def _initialize_train_progress_bar_id(self) -> None:
        # From the tokens already trained (a resumed run), so the rate counts only this process's.
        self.train_progress_bar_id = self.progress.add_task(
            "training", total=self.trainer.max_steps * self.tokens_per_step,
            completed=self.trainer.global_step * self.tokens_per_step, unit="tok",
        )

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.is_disabled:
            return
        if self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, trainer.global_step * self.tokens_per_step)
        if trainer.global_step % trainer.log_every_n_steps == 0:
            self._update_metrics(trainer, module)
        self.refresh()

    def configure_columns(self, trainer) -> list:
        bar = CustomBarColumn(complete_style=self.theme.progress_bar, finished_style=self.theme.progress_bar_finished,
                              pulse_style=self.theme.progress_bar_pulse)
        return [TextColumn("[progress.description]{task.description}"), bar, _Count(), CustomTimeColumn(style=self.theme.time)]
