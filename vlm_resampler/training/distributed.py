"""Several processes in one job: `torchrun --nproc_per_node=N launch/train.py ...`, or a SLURM job
with `tasks_per_node=N` through submitit. The Trainer runs DDP (gloo on CPU, NCCL on GPUs).

- `stage.<name>.batch_size` is the global batch: each of the N processes gets batch_size / N
  examples per forward pass, and DDP averages the gradients, so an optimizer step sees the same
  examples and (up to float rounding) the same gradient as one process with batch_size.
- Only rank 0 writes files: run and stage files, status, the JSONL log, resumable checkpoints
  (the Trainer adds one RNG-state file per rank to those). The other ranks wait at barriers where
  they read what rank 0 wrote (the previous stage's checkpoint).
- Ranks are read from the environment (RANK, WORLD_SIZE: set by torchrun, or exported here from
  submitit's SLURM variables), so they are known before the process group exists.
"""

from __future__ import annotations

import atexit
import logging
import os

import torch

log = logging.getLogger(__name__)


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return rank() == 0


# Where a scheduler says how many CPUs this process was given, in the order they are trusted.
CPU_ALLOTMENT_VARS = ("SLURM_CPUS_PER_TASK", "OMP_NUM_THREADS")


def allotted_threads(configured: int | None) -> tuple[int | None, str]:
    """Torch threads for this process, and where the number came from: `num_threads` when set, else
    the CPUs the scheduler gave the job (SLURM_CPUS_PER_TASK; torchrun's OMP_NUM_THREADS), else None
    (torch's default: every core). Small models on a shared node slow down many times over when
    their threads outnumber their CPUs (measured: 30x on 2 cores with one other process)."""
    if configured:
        return int(configured), "num_threads"
    for var in CPU_ALLOTMENT_VARS:
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value), var
    return None, "torch's default"


def set_threads(configured: int | None) -> None:
    threads, source = allotted_threads(configured)
    if threads:
        torch.set_num_threads(threads)
    if is_main_process():
        print(f"torch threads: {torch.get_num_threads()} ({source})", flush=True)


def export_scheduler_env() -> None:
    """Inside a submitit job with several tasks: export MASTER_ADDR/PORT, RANK, WORLD_SIZE and
    LOCAL_RANK from its SLURM variables, so that torch's env:// initialisation finds them."""
    if "RANK" in os.environ or not os.environ.get("SUBMITIT_EXECUTOR"):
        return
    import submitit

    if submitit.JobEnvironment().num_tasks > 1:
        # Each task keeps every GPU visible; accelerate picks cuda:LOCAL_RANK.
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def init_process_group() -> None:
    """Join the job's process group now (before anything is written), if there are several processes."""
    export_scheduler_env()
    keep_logs_to_main_process()
    if world_size() > 1:
        from accelerate import PartialState

        # The same arguments as TrainingArguments(use_cpu=...) uses, which later adopts this group.
        state = PartialState(cpu=not torch.cuda.is_available())
        log.info(
            "process %d of %d (%s, backend %s)", state.process_index, state.num_processes, state.device, state.backend
        )
        # Left to interpreter teardown, gloo's worker threads can outlive the objects they hold and
        # abort the process ("terminate called without an active exception", SIGABRT) after a run
        # that succeeded (CI saw it on rank 1, pytorch#190489); atexit runs while Python is intact.
        atexit.register(destroy_process_group)


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def destroy_process_group() -> None:
    if _initialized():
        torch.distributed.destroy_process_group()


def barrier() -> None:
    if _initialized():
        torch.distributed.barrier()


def max_over_processes(value: int) -> int:
    """The largest `value` any process holds (every process must call this at the same point)."""
    if not _initialized() or torch.distributed.get_world_size() == 1:
        return value
    device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return int(tensor.item())


def per_process_batch(batch_size: int, stage_name: str) -> int:
    processes = world_size()
    if batch_size % processes:
        raise ValueError(
            f"stage.{stage_name}.batch_size={batch_size} is the global batch and must split evenly over "
            f"the {processes} processes; use a multiple of {processes}"
        )
    return batch_size // processes


def keep_logs_to_main_process() -> None:
    """Hydra opened the job's log file in every process; only rank 0 keeps writing to it."""
    if is_main_process():
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()


def torchrun_overrides(argv: list[str]) -> list[str]:
    """Extra Hydra overrides for this process of a torchrun job; exits with a message when the
    command cannot run under torchrun. Every rank composes the config itself, so the run
    directory must not depend on the clock, and only rank 0 writes Hydra's .hydra/ files."""
    import sys

    if world_size() == 1:
        return []
    if "-m" in argv or "--multirun" in argv:
        print(
            "error: -m (a sweep) does not run under torchrun; for multi-process sweep jobs use "
            "hydra/launcher=slurm with hydra.launcher.tasks_per_node=N",
            file=sys.stderr,
        )
        sys.exit(2)
    if not any(a.startswith(("experiment.name=", "hydra.run.dir=", "experiment=")) for a in argv):
        print(
            "error: under torchrun give the run a name (experiment.name=NAME): the default name is the "
            "start time, which each of the processes would read for itself",
            file=sys.stderr,
        )
        sys.exit(2)
    return [] if is_main_process() else ["hydra.output_subdir=null"]
