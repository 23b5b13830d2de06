"""Lightning loggers whose x-axis is training tokens (``conf/logger``).

SAE runs are compared at equal training tokens, and runs of different batch sizes (or process
counts) take different step counts to see them: with steps on the axis their curves do not line up.
"""

from __future__ import annotations

from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only


class TokenSteps:
    """A logger that knows how many training tokens one optimiser step consumes: ``tokens_per_step``,
    set by ``ctxsae.train.run`` once the batch size and process count are known."""

    tokens_per_step: int = 1

    def tokens(self, step: int | None) -> int | None:
        return None if step is None else step * self.tokens_per_step


class TokensTensorBoardLogger(TokenSteps, TensorBoardLogger):
    """TensorBoard scalars written at step = training tokens seen (TensorBoard's STEP axis reads as tokens)."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        super().log_metrics(metrics, self.tokens(step))


class TokensCSVLogger(TokenSteps, CSVLogger):
    """CSV metrics with a ``tokens`` column (training tokens seen) beside Lightning's ``step``."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        super().log_metrics(metrics if step is None else {**metrics, "tokens": self.tokens(step)}, step)
