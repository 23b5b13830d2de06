"""The one LightningModule: any SAE is injected, the objective comes from the loss config."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import lightning as L
import torch
from torch import Tensor

from ctxsae.errors import NonFiniteLoss
from ctxsae.metrics.basic import fired, fvu, l0
from ctxsae.metrics.reconstruction import Reconstruction
from ctxsae.metrics.sparsity import Sparsity
from ctxsae.models.base import SAE
from ctxsae.ranges import above, at_least, fraction
from ctxsae.cache.dataset import Windows
from ctxsae.train.objective import LossConfig, compute_loss


@dataclass
class OptimConfig:
    lr: float = field(default=1e-3, metadata=above(0))
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = field(default=50, metadata=at_least(0))  # linear LR warm-up
    decay_fraction: float = field(default=0.2, metadata=fraction(hi_open=False))  # linear decay to zero over this last share of training
    init_b_dec_tokens: int = field(default=16_384, metadata=at_least(0))  # tokens used to centre b_dec before training (0: skip)


def adam(parameters, lr: float, betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Adam:
    """The training optimizer: Adam with its fused kernel (one kernel per parameter on CPU and GPU).

    Unfused Adam issues about ten elementwise kernels per parameter per step; on a busy 2-core CPU
    each multi-threaded kernel can wait a scheduler slice for its second thread, and that made the
    optimizer a quarter of a TopK step. The fused update is the same Adam (it agrees with the
    unfused one to float rounding, ``tests/train/test_module.py``).
    """
    return torch.optim.Adam(parameters, lr=lr, betas=betas, fused=True)


class SAEModule(L.LightningModule):
    def __init__(self, sae: SAE, loss: LossConfig, optim: OptimConfig):
        super().__init__()
        self.sae, self.loss_cfg, self.optim_cfg = sae, loss, optim
        # Tokens since each latent last fired; part of the checkpoint so "dead" survives a resume.
        self.register_buffer("tokens_since_fired_F", torch.zeros(sae.d_sae, dtype=torch.long))
        # Validation accumulates over the whole held-out split (summed across DDP processes): val/fvu is the
        # split's FVU, as evaluate.py computes it, not a mean of per-batch FVUs.
        self.val_reconstruction, self.val_sparsity = Reconstruction(sae.d_in), Sparsity(sae.d_sae)
        self._t_last: float | None = None
        self._first_nonfinite_step: Tensor | None = None  # on the training device; -1 while every loss was finite

    def setup(self, stage: str) -> None:
        # Runs before a checkpoint is restored, so a resumed run keeps its trained b_dec.
        dm = getattr(self.trainer, "datamodule", None)
        if stage == "fit" and dm is not None and self.optim_cfg.init_b_dec_tokens > 0:
            self.sae.init_from_data(dm.sample_activations(self.optim_cfg.init_b_dec_tokens))

    def dead_F(self) -> Tensor:
        return self.tokens_since_fired_F >= self.loss_cfg.dead_after_tokens

    def training_step(self, batch: Windows, batch_idx: int) -> Tensor:
        loss, out, logs = compute_loss(self.sae, batch, self.loss_cfg, self.global_step, self.dead_F())
        self.note_nonfinite(loss)
        per_token = out.effective_codes is out.codes  # then test and count the codes once
        with torch.no_grad():
            fired_F = fired(out.codes, batch.mask_BT)
            if not per_token:
                fired_F |= fired(out.effective_codes, batch.mask_BT)
            n_tokens = batch.mask_BT.sum()
            if self.trainer.world_size > 1:  # every DDP rank must agree on which latents are dead
                fired_F, n_tokens = self.all_gather(fired_F).any(0), self.all_gather(n_tokens).sum()
            self.tokens_since_fired_F += n_tokens
            self.tokens_since_fired_F.masked_fill_(fired_F, 0)  # not [fired_F] = 0: boolean indexing syncs with the GPU
        now, last = time.perf_counter(), self._t_last
        self._t_last = now
        if not self.logging_step():
            return loss
        # The logger takes step figures only every log_every_n_steps; computing them on the other steps
        # (FVU, L0: passes over the codes) cost about a fifth of a TopK step on the CPU.
        with torch.no_grad():
            l0_novel = l0(out.codes, batch.mask_BT)
            logs |= {
                "train/fvu": fvu(batch.x_BTD, out.reconstruction, batch.mask_BT),
                "train/l0": l0_novel,
                "train/l0_effective": l0_novel if per_token else l0(out.effective_codes, batch.mask_BT),
                "train/dead_fraction": self.dead_F().float().mean(),
                "train/lr": torch.tensor(self.optimizers().param_groups[0]["lr"]),
            }
        if last is not None:
            logs["train/tokens_per_s"] = torch.tensor(batch.x_BTD.shape[0] * batch.x_BTD.shape[1] / (now - last))
        self.log_dict(logs, prog_bar=False)
        self.log("fvu", logs["train/fvu"], prog_bar=True, logger=False)
        self.log("l0", logs["train/l0"], prog_bar=True, logger=False)
        return loss

    def logging_step(self) -> bool:
        """Whether the logger takes this training step's figures (Lightning's rule, one optimizer step per batch)."""
        return (self.global_step + 1) % max(self.trainer.log_every_n_steps, 1) == 0 or self.trainer.should_stop

    def note_nonfinite(self, loss: Tensor) -> None:
        """Record the first step whose loss is not finite, and raise NonFiniteLoss every log_every_n_steps.

        Reading the loss on the host every step would make the host wait for the device each step;
        the record stays on the device and is read where the logger reads its figures anyway, before
        any checkpoint is written (``on_save_checkpoint``) and at the end, so a non-finite run stops
        within log_every_n_steps steps and never overwrites a good checkpoint.
        """
        if self._first_nonfinite_step is None:
            self._first_nonfinite_step = torch.full((), -1, dtype=torch.long, device=loss.device)
        first = self._first_nonfinite_step
        first.masked_fill_((first < 0) & ~torch.isfinite(loss.detach()), self.global_step)
        if self.logging_step():
            self.raise_if_nonfinite()

    def raise_if_nonfinite(self) -> None:
        step = -1 if self._first_nonfinite_step is None else int(self._first_nonfinite_step)
        if step >= 0:
            raise NonFiniteLoss(f"loss is not finite from step {step} on: lower optim.lr or raise trainer.gradient_clip_val;"
                                " the last good checkpoint is kept")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.raise_if_nonfinite()

    def on_train_end(self) -> None:
        self.raise_if_nonfinite()

    def validation_step(self, batch: Windows, batch_idx: int) -> None:
        out = self.sae(batch.x_BTD, batch.context_start_BT)
        self.val_reconstruction.update(batch, out)
        self.val_sparsity.update(batch, out)

    def on_validation_epoch_end(self) -> None:
        reconstruction, sparsity = self.val_reconstruction.compute(), self.val_sparsity.compute()
        self.log_dict({"val/fvu": reconstruction["fvu"], "val/l0": sparsity["l0"],
                       "val/l0_effective": sparsity["l0_effective"]})
        self.val_reconstruction.reset()
        self.val_sparsity.reset()

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.sae.unit_norm_decoder:
            self.sae.remove_parallel_decoder_grad()

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # Part of the step, not of on_train_batch_end: checkpoint callbacks run before the module's
        # on_train_batch_end, and a checkpoint holding un-normalised rows would resume off course.
        if self.sae.unit_norm_decoder:
            self.sae.normalize_decoder()

    def configure_optimizers(self):
        cfg = self.optim_cfg
        opt = adam(self.sae.parameters(), cfg.lr, tuple(cfg.betas))
        total_steps = self.trainer.max_steps
        decay_start = int(total_steps * (1 - cfg.decay_fraction))

        def factor(step: int) -> float:
            warm = min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
            if step < decay_start:
                return warm
            return warm * max(0.0, (total_steps - step) / max(total_steps - decay_start, 1))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
