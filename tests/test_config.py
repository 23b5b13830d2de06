"""Every config option composes against the structured schema, and the SLURM launcher's submission
script carries the configured resources (SLURM itself cannot run here)."""

import inspect
import os
from pathlib import Path

import pytest
import submitit
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch import Trainer
from omegaconf import OmegaConf

from ctxsae.config import register_configs
from ctxsae.eval.config import register_eval_config
from ctxsae.models import ARCHITECTURES, build_sae
from ctxsae.models.base import SAE

CONF = Path(__file__).resolve().parents[1] / "conf"
register_configs()
register_eval_config()


TRAINER_ARGUMENTS = set(inspect.signature(Trainer).parameters)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def composed(*overrides: str, config: str = "train", hydra: bool = False):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config, overrides=list(overrides), return_hydra_config=hydra)


@pytest.mark.parametrize("model", options("model"))
def test_every_model_composes_with_its_loss_and_builds(model):
    cfg = composed(f"model={model}")
    cfg.model.d_in, cfg.model.d_sae = 16, 256
    sae = build_sae(cfg.model)
    assert isinstance(sae, SAE) and sae.architecture == model and sae.d_sae == 256
    assert instantiate(cfg.loss) is not None


def test_every_architecture_has_its_model_config():
    assert options("model") == sorted(ARCHITECTURES)


@pytest.mark.parametrize("group", ["data", "lm", "loss", "trainer", "callbacks", "logger", "ablation"])
def test_every_option_of_a_group_composes(group):
    for option in options(group):
        cfg = composed(f"{'+' if group == 'ablation' else ''}{group}={option}", hydra=True)
        HydraConfig.instance().set_config(cfg)
        assert OmegaConf.to_container(cfg[group if group != "ablation" else "model"], resolve=True)


def test_trainer_callbacks_and_logger_are_built_from_their_groups(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from ctxsae.errors import UserError
    from ctxsae.train.callbacks import Throughput
    from ctxsae.train.run import build_trainer
    from ctxsae.train.run_dir import RunDir

    run_dir = RunDir(tmp_path)
    trainer, throughput = build_trainer(composed("trainer.gradient_clip_val=0.5", "logger=csv",
                                                 "callbacks.model_checkpoint.every_n_train_steps=7"), run_dir)
    checkpoint = next(c for c in trainer.callbacks if isinstance(c, ModelCheckpoint))
    assert trainer.gradient_clip_val == 0.5 and isinstance(throughput, Throughput)
    assert checkpoint.dirpath == str(run_dir.checkpoints) and checkpoint._every_n_train_steps == 7
    assert trainer.logger.log_dir.startswith(str(tmp_path))
    with pytest.raises(UserError, match="^trainer: .*gradient_clipval"):
        build_trainer(composed("+trainer.gradient_clipval=0.5"), run_dir)
    with pytest.raises(UserError, match=r"^callbacks\.model_checkpoint: .*every_n_steps.*see conf/callbacks/"):
        build_trainer(composed("+callbacks.model_checkpoint.every_n_steps=7"), run_dir)


@pytest.mark.parametrize("sweep", options("sweep"))
def test_every_sweep_composes_at_each_of_its_values(sweep):
    cfg = composed(f"+sweep={sweep}", hydra=True)
    params = dict(cfg.hydra.sweeper.params)
    assert params
    for i in range(max(len(str(v).split(",")) for v in params.values())):
        point = [f"{k}={str(v).split(',')[min(i, len(str(v).split(',')) - 1)]}" for k, v in params.items()]
        job = composed(f"+sweep={sweep}", *point)
        assert job.max_tokens > 0 and job.model._target_.startswith("ctxsae.models.")
        assert set(job.trainer) - {"_target_"} <= TRAINER_ARGUMENTS, f"{sweep}: not a Trainer argument"


def test_eval_and_extract_configs_compose():
    assert composed("run=some/dir", config="eval").run == "some/dir"
    assert composed("lm.layer=3", config="extract").lm.layer == 3


def test_slurm_launcher_writes_the_configured_sbatch_array(tmp_path, monkeypatch):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\n")  # submitit only checks that srun exists
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    cfg = composed("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.array_parallelism=2",
                   "+sweep=pareto", f"hydra.sweep.dir={tmp_path / 'sweep'}", hydra=True)
    scripts = []

    class Capture(submitit.AutoExecutor):  # what submitit would hand to sbatch, built as it builds arrays
        def map_array(self, fn, *job_args):
            array = submitit.SlurmExecutor(self._executor.folder, self._executor.max_num_timeout)
            array.update_parameters(**self._executor.parameters)
            array.parameters["map_count"] = len(job_args[0])
            scripts.append(array._make_submission_file_text("python -m submitit.core._submit", "uid"))
            return []

    monkeypatch.setattr(submitit, "AutoExecutor", Capture)
    launcher = instantiate(cfg.hydra.launcher)
    HydraConfig.instance().set_config(cfg)
    launcher.config = cfg
    launcher.launch([[f"model={m}", "model.k=8"] for m in ("topk", "recurrent", "attention")], 0)
    (script,) = scripts
    for line in ("--partition=gpu", "--gpus-per-node=1", "--cpus-per-task=8", "--mem=64GB", "--time=240",
                 "--ntasks-per-node=1", "--array=0-2%2", f"--output={tmp_path / 'sweep'}/.submitit/"):
        assert f"#SBATCH {line}" in script, script
