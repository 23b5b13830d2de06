"""The token progress bar: one bar for the run in tokens, and the metrics read from the device only every logging interval."""

import lightning as L

from ctxsae.models.topk import TopKConfig, TopKSAE
from ctxsae.train.callbacks import TokenProgressBar
from ctxsae.train.module import OptimConfig, SAEModule
from ctxsae.train.objective import LossConfig
from tests.train.test_datamodule import make_dm


class CountingBar(TokenProgressBar):
    """Counts how often the bar reads the metrics (each read waits for the device with .item())."""

    reads = 0

    def get_metrics(self, trainer, module):
        self.reads += 1
        return super().get_metrics(trainer, module)


def test_the_bar_counts_the_runs_tokens_across_epochs_and_reads_metrics_every_logging_interval(tmp_path):
    dm, _ = make_dm(tmp_path)  # 30 training windows of 12 tokens, 4 a batch: 7 steps an epoch, 48 tokens a step
    module = SAEModule(TopKSAE(TopKConfig(d_in=16, d_sae=32, k=4, auxk_k=8)), LossConfig(), OptimConfig(init_b_dec_tokens=0))
    bar = CountingBar()
    trainer = L.Trainer(max_steps=20, log_every_n_steps=5, callbacks=[bar], logger=False, enable_checkpointing=False,
                        enable_model_summary=False, accelerator="cpu", limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    task = bar.progress.tasks[bar.train_progress_bar_id]
    assert (task.completed, task.total, task.fields["unit"]) == (20 * 48, 20 * 48, "tok")
    assert task.description == "training" and trainer.current_epoch >= 2  # one bar over three epochs
    assert 0 < bar.reads <= 20 // 5 + 3  # every 5 steps and at each epoch's end, not every step
