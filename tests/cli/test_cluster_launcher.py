"""The README's SLURM sweep: its launcher config, the resume of a requeued job, and the sweep run in miniature."""

from __future__ import annotations

import re
import shlex
import signal

import lightning as L
import pytest
from omegaconf import OmegaConf

from rcdm_lab.checkpoint import read_checkpoint
from rcdm_lab.cli.common import spell_resolution_choices
from rcdm_lab.cli.train import cluster_environment, resolve_ckpt_path
from rcdm_lab.errors import RCDMError
from rcdm_testing import REPO, run_cli, tiny_overrides

# Hydra's note that it checks conf/hydra/launcher/submitit_*.yaml against the plugin's schemas (rcdm_lab.cli.common
# silences it for the commands; pytest resets warning filters per test).
pytestmark = pytest.mark.filterwarnings(r"ignore:\s*'hydra/launcher/submitit_\w+' is validated:UserWarning")


def launcher_of(*overrides: str) -> dict:
    """hydra.launcher of the rcdm-train config composed with `overrides`, resolved as the launcher receives it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from rcdm_lab.cli.common import CONF_DIR, register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


def readme_sweep() -> list[str]:
    """The overrides of the `rcdm-train -m` command in the README's "Running on a cluster" section."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Running on a cluster", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    command = shlex.split(block.replace("\\\n", " "))
    assert command[:2] == ["rcdm-train", "-m"], command
    return command[2:]


def as_dict(overrides: list[str]) -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in overrides)


def miniature(overrides: list[str], tmp_path) -> list[str]:
    """The README's sweep on this machine: submitit_local, one CPU process, its first encoder with random weights.

    Every key of the README's command is either kept or replaced here on purpose; a key this function does not know
    fails the test, so that the README's command and this miniature cannot drift apart.
    """
    kept = ["layer", "trainer"]                        # the sweep over layers, on the DDP trainer
    cluster_scale = ["data", "data.dataset.root", "data.cache_dir", "resolution", "model", "logger",
                     "hydra.sweep.dir"]               # replaced by tiny_overrides and tmp_path
    args = as_dict(overrides)
    unknown = [key for key in args if key not in {*kept, *cluster_scale, "hydra/launcher", "encoder",
                                                   "trainer.devices", "trainer.num_nodes"}
               and not key.startswith("hydra.launcher.")]
    assert not unknown, f"README cluster command has overrides the miniature does not handle: {unknown}"
    assert args["hydra/launcher"] == "submitit_slurm"
    return [
        "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=3",
        *(f"{key}={args[key]}" for key in kept),
        "trainer.devices=1", "trainer.num_nodes=1",
        f"encoder={args['encoder'].split(',')[0]}", "encoder.weights=random",
        *tiny_overrides(tmp_path), "trainer.max_steps=1", f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]


def test_readme_sweep_composes_with_one_slurm_task_per_gpu():
    # The first value of each swept key: every override of the README's command exists in conf/.
    overrides = [arg.split(",")[0] for arg in spell_resolution_choices(readme_sweep())]
    launcher = launcher_of(*overrides)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert launcher["partition"] == "gpu"
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (2, 8, 8)
    assert launcher["max_num_timeout"] > 0, "a job stopped by its time limit must be requeued"
    assert launcher["submitit_folder"] == "/shared/rcdm_lab/runs/fig02/.submitit/%j"


def test_launcher_follows_the_trainer_on_a_single_device():
    launcher = launcher_of("hydra/launcher=submitit_slurm")
    assert (launcher["nodes"], launcher["tasks_per_node"]) == (1, 1)


def test_misspelt_launcher_key_fails_at_composition():
    with pytest.raises(Exception, match="partiton"):
        launcher_of("hydra/launcher=submitit_slurm", "hydra.launcher.partiton=gpu")


def _run_with_checkpoint(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    return OmegaConf.create({"output_dir": str(tmp_path), "ckpt_path": None})


def test_requeued_slurm_job_resumes_its_last_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    cfg = _run_with_checkpoint(tmp_path)
    assert resolve_ckpt_path(cfg) == str(tmp_path / "checkpoints" / "last.ckpt")


@pytest.mark.parametrize("restart_count", [None, "0"])
def test_first_start_still_refuses_an_existing_run(tmp_path, monkeypatch, restart_count):
    if restart_count is None:
        monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    else:
        monkeypatch.setenv("SLURM_RESTART_COUNT", restart_count)
    with pytest.raises(RCDMError, match="ckpt_path=last"):
        resolve_ckpt_path(_run_with_checkpoint(tmp_path))


def test_requeued_job_killed_before_its_first_checkpoint_starts_fresh(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert resolve_ckpt_path(OmegaConf.create({"output_dir": str(tmp_path), "ckpt_path": None})) is None


def test_lightning_does_not_requeue_a_slurm_job_itself(monkeypatch):
    # A SLURM task as submitit's srun starts it: Lightning must not install its SIGUSR1 requeue handler (submitit
    # requeues on SIGUSR2), or a job could be requeued twice.
    for key, value in {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "1", "SLURM_JOB_ID": "7",
                       "SLURM_JOB_NAME": "train", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
                       "SLURM_NODELIST": "node1"}.items():
        monkeypatch.setenv(key, value)
    before = signal.getsignal(signal.SIGUSR1)
    trainer = L.Trainer(accelerator="cpu", devices=1, plugins=cluster_environment(), logger=False,
                        enable_progress_bar=False, enable_model_summary=False)
    connector = trainer._signal_connector
    try:
        connector.register_signal_handlers()
        assert signal.getsignal(signal.SIGUSR1) is before
    finally:
        connector.teardown()


@pytest.mark.slow
def test_readme_sweep_runs_in_miniature_with_submitit_local(tmp_path):
    result = run_cli("rcdm-train", "-m", *miniature(readme_sweep(), tmp_path), timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoints = sorted((tmp_path / "sweep").glob("*/checkpoints/last.ckpt"))
    layers = {read_checkpoint(c).record.encoder.spec["layer"] for c in checkpoints}
    assert len(checkpoints) == 2 and layers == {"backbone", "head"}
    # Run as submitit jobs (not in this process): each job left its log in the sweep's .submitit folder.
    assert list((tmp_path / "sweep" / ".submitit").glob("*/*_log.err"))
