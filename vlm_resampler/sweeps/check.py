"""The check every job of a sweep passes before anything is submitted: train.py's own validation,
then the whole model instantiated on the meta device (launch/inspect.py's build: shapes only, no
memory, no weights) with each stage's trainable set, so a job that would fail while building its
model fails here, in seconds, with the others listed beside it; and, for SLURM jobs on GPUs, the
host memory its node's processes hold while they load against the memory the job asks for."""

from __future__ import annotations

import math

from omegaconf import DictConfig, OmegaConf

from vlm_resampler.config.validate import validate_train_config
from vlm_resampler.errors import ConfigError
from vlm_resampler.inspection.host_memory import GiB, explain, node_bytes


def model_report(cfg: DictConfig, label: str = "") -> dict:
    """inspection's report (exact parameter counts, tokens, per-stage trainable counts) of a
    composed train config."""
    from vlm_resampler.inspection.counts import inspect_source
    from vlm_resampler.inspection.sources import Source

    stages = list(cfg.stages)
    source = Source(
        label=label,
        kind="overrides",
        model_tree=OmegaConf.to_container(cfg.model, resolve=True),
        stages=stages,
        stage_configs={s: OmegaConf.to_container(cfg.stage[s], resolve=True) for s in stages},
    )
    try:
        return inspect_source(source)
    except ConfigError:
        raise
    except Exception as err:  # any failure to build is this job's error
        raise ConfigError(f"the model cannot be built on the meta device: {type(err).__name__}: {err}") from err


def check_node_memory(report: dict, launcher: DictConfig) -> None:
    """Refuse a SLURM job on GPUs whose per-node memory (mem_gb, SLURM's --mem) is less than its
    training processes hold while they load (inspection/host_memory.py): such a job is killed for
    memory after its wait in the queue, before it trains a step."""
    if not str(launcher.get("_target_", "")).endswith("SlurmLauncher"):
        return
    mem_gb, gpus = launcher.get("mem_gb"), launcher.get("gpus_per_node")
    if mem_gb is None or not gpus:
        return
    processes = int(launcher.get("tasks_per_node") or 1)
    need = node_bytes(report["host_memory"], processes)
    if need <= float(mem_gb) * GiB:
        return
    raise ConfigError(
        f"hydra.launcher.mem_gb={mem_gb}: the node's {processes} training process(es) (tasks_per_node={processes}) "
        f"hold about {need / GiB:.1f} GiB of host memory while they load, more than the {mem_gb} GB asked for\n  "
        f"{explain(report['host_memory'])}\n"
        f"  ask for hydra.launcher.mem_gb={math.ceil(need / GiB)} or more, or hydra.launcher.mem_gb=null for the "
        "partition's default"
    )


def validate_sweep_job(cfg: DictConfig, launcher: DictConfig | None = None) -> None:
    """`launcher`: the job's hydra.launcher node, where it is known."""
    validate_train_config(cfg)
    report = model_report(cfg)
    if launcher is not None:
        check_node_memory(report, launcher)
