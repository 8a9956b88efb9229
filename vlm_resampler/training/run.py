"""One run: its directory, its stages in order, each starting from the previous stage's saved
checkpoint (rebuilt from disk, loaded strictly), and a status file that says how it ended.

Running the same command again continues an unfinished run (killed, signalled, preempted):
completed stages are skipped and the interrupted one resumes from its last resumable checkpoint
(training/resume.py). Under torchrun or a multi-task SLURM job every process runs this, and only
rank 0 writes files (training/distributed.py)."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import set_seed

from vlm_resampler.data.datasets import BadImageError
from vlm_resampler.errors import OutOfGpuMemory, first_line
from vlm_resampler.runs import layout
from vlm_resampler.runs.atomic import fsync_dir, write_json, write_text
from vlm_resampler.runs.checkpoint import save_weights, weights_bytes
from vlm_resampler.runs.disk_space import DiskFullError, is_out_of_space, named_if_out_of_space, require_space
from vlm_resampler.runs.load import build_model, load_stage
from vlm_resampler.runs.metadata import build_metadata
from vlm_resampler.runs.run_meta import run_meta
from vlm_resampler.training import distributed, resume
from vlm_resampler.training.interrupt import StopOnSignal, StopSignals, TrainingInterrupted
from vlm_resampler.training.plots import plot_losses
from vlm_resampler.training.precision import check_device, enable_gradient_checkpointing
from vlm_resampler.training.stage_data import stage_dataset
from vlm_resampler.training.stages import apply_freeze, attach_stage_lora, format_trainable
from vlm_resampler.training.tracking import JobTracking, job_tracking
from vlm_resampler.training.trainer import CodeWarmup, JsonlLog, StageObjective, StageTrainer, training_arguments

log = logging.getLogger(__name__)
ALWAYS_SAVED = ["resampler", "projector", "overlap_head", "stitch"]
# How a run computes (train.yaml), with what a run dir written before they existed did.
COMPUTE_SETTINGS = {"precision": "fp32", "dataloader_workers": 0}
# also recorded in the metadata (the model tree carries attn_implementation to the loaders)
RECORDED_COMPUTE = {"gradient_checkpointing": False, "attn_implementation": "sdpa"}


def resolved_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def backbone_records(cfg: dict) -> dict:
    from vlm_resampler.models.backbones import backbone_fingerprint, resolve_backbone

    records = {}
    for role, key in (("vision", "vision_encoder"), ("llm", "language_model")):
        node = cfg["model"][key]
        records[role] = {
            "name_or_path": node["name_or_path"],
            "revision": node["revision"],
            "fingerprint": backbone_fingerprint(resolve_backbone(node["name_or_path"])),
        }
    return records


def set_status(run_dir: Path, state: str, **extra) -> None:
    if distributed.is_main_process():
        write_json(run_dir / layout.STATUS, {"status": state, **extra})


def run_again(cfg) -> str:
    """How to resume: the default experiment.name is a timestamp, so "the same command" must name it."""
    return f"run the same command again with experiment.name={cfg['experiment']['name']}"


def run_training(cfg: DictConfig, run_dir: Path) -> Path:
    """Run every stage in cfg.stages (skipping those an earlier attempt completed); returns the
    last stage directory. Raises TrainingInterrupted after a stop signal (see interrupt.py)."""
    run_dir = Path(run_dir)
    distributed.init_process_group()
    resolved = resolved_container(cfg)
    stages = list(cfg.stages)
    distributed.set_threads(cfg.num_threads)
    check_device(str(cfg.get("precision", "fp32")))  # here, on the machine that trains (not the launching one)
    lock = resume.training_lock(run_dir) if distributed.is_main_process() else contextlib.nullcontext()
    with lock, StopSignals() as signals, contextlib.ExitStack() as tracked:
        done = resume.resume_point(run_dir, resolved, stages)
        distributed.barrier()  # every process has read the run's state before rank 0 rewrites it
        if distributed.is_main_process():
            write_text(run_dir / layout.RESOLVED_CONFIG, OmegaConf.to_yaml(resolved))
            write_json(run_dir / layout.RUN_META, run_meta(cfg))
        set_status(run_dir, layout.RUNNING, stages=stages, completed=done)
        # conf/logger: the trackers' runs end as the run does (status.json), on leaving this block
        tracking = tracked.enter_context(job_tracking(resolved, run_dir))
        name = None  # the stage running, once the loop starts
        try:
            previous = Path(cfg.init_from) if cfg.init_from else None
            for name in stages:
                if name in done:
                    print(f"stage {name}: completed by an earlier attempt, skipped", flush=True)
                    previous = run_dir / name
                    continue
                previous = run_stage(resolved, name, run_dir, previous, signals, tracking).stage_dir
                release_finished_stage()
                done.append(name)
                set_status(run_dir, layout.RUNNING, stages=stages, completed=done)
                signum = signals.agreed()
                if signum and name != stages[-1]:
                    following = stages[stages.index(name) + 1]
                    raise TrainingInterrupted(
                        signum,
                        f"stopped after stage {name} completed; {run_again(cfg)} to continue with stage {following}",
                        signals.previous.get(signum),
                    )
        except TrainingInterrupted as stop:
            set_status(run_dir, layout.INTERRUPTED, stages=stages, completed=done, reason=str(stop))
            raise
        except KeyboardInterrupt:
            set_status(run_dir, layout.INTERRUPTED, stages=stages, completed=done, reason="KeyboardInterrupt")
            raise
        except BadImageError as err:
            # The data changed under a running job (an image deleted or damaged after it was checked): the
            # run is not lost; it resumes from its last resumable checkpoint once the data is repaired.
            if distributed.is_main_process():
                write_text(run_dir / layout.TRACEBACK, traceback.format_exc())
            set_status(
                run_dir,
                layout.INTERRUPTED,
                stages=stages,
                completed=done,
                traceback=layout.TRACEBACK,
                reason=f"{err}; repair the data (or set data.skip_bad_rows=true) and {run_again(cfg)} "
                "to resume from the last resumable checkpoint",
            )
            raise
        except BaseException as err:
            if isinstance(err, DiskFullError) or is_out_of_space(
                err
            ):  # also a log line or status.json that did not fit
                raise stopped_for_space(err, run_dir, cfg, stages, done) from err
            if distributed.is_main_process():
                write_text(run_dir / layout.TRACEBACK, traceback.format_exc())
            set_status(run_dir, layout.FAILED, error=f"{type(err).__name__}: {err}", traceback=layout.TRACEBACK)
            if isinstance(err, torch.OutOfMemoryError):
                raise out_of_gpu_memory(err, run_dir, name) from err
            raise
        set_status(run_dir, layout.DONE, stages=stages, completed=done)
    return previous


def out_of_gpu_memory(err: torch.OutOfMemoryError, run_dir: Path, stage: str | None) -> OutOfGpuMemory:
    """The one-line refusal of a stage that did not fit its GPU: the memory plan, and what lowers the peak."""
    gib = torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else None
    gpu_mem = f"{gib:.0f}" if gib else "<GiB>"
    return OutOfGpuMemory(
        f"{f'stage {stage}' if stage else 'training'} ran out of GPU memory ({first_line(err)})\n"
        f"  `python launch/inspect.py {run_dir} --gpu-mem {gpu_mem}` plans each stage's peak memory and the "
        "largest batch that fits; lower that stage's batch_size (raise its grad_accum to keep the optimizer's "
        "batch), or set gradient_checkpointing=true or precision=bf16, under a new experiment.name (the "
        f"traceback is in {run_dir / layout.TRACEBACK})"
    )


def release_finished_stage() -> None:
    """Free a finished stage's model, Trainer and optimizer state now. They hold reference cycles
    (measured: the model outlives run_stage until the garbage collector runs), so on a GPU the next
    stage, or eval_after's process, would otherwise start beside their weights, gradients and AdamW
    moments, and the caching allocator would keep what they freed."""
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def stopped_for_space(err: BaseException, run_dir: Path, cfg, stages: list[str], done: list[str]) -> DiskFullError:
    """The run is left resumable (status interrupted): what a save could not fit was removed, and
    the previous checkpoints are as they were. Returns the error to raise, saying how to go on."""
    reason = (
        f"{err if isinstance(err, DiskFullError) else f'no space left on the device under {run_dir}: {err}'}. "
        f"The run is resumable ({resume.saved_progress(run_dir, stages)}): free space, then {run_again(cfg)}"
    )
    try:
        if distributed.is_main_process():
            write_text(run_dir / layout.TRACEBACK, traceback.format_exc())
        set_status(
            run_dir, layout.INTERRUPTED, stages=stages, completed=done, traceback=layout.TRACEBACK, reason=reason
        )
    except OSError as status_err:
        if not is_out_of_space(status_err):
            raise
        reason += f" ({layout.STATUS} could not be updated either: {status_err})"
    return DiskFullError(reason)


def start_model(cfg: dict, init_from: Path | None):
    """A fresh model from the config, or the model of a saved stage (rebuilt from its metadata)."""
    if init_from is None:
        return build_model(cfg["model"], seed=int(cfg["seed"])), dict(cfg["model"]), list(ALWAYS_SAVED)
    loaded = load_stage(init_from)
    log.info("stage starts from %s (metadata loaded, weights loaded strictly)", init_from)
    return loaded.model, dict(loaded.metadata["model"]), list(loaded.metadata["saved_modules"])


def save_stage_checkpoint(model, stage_dir: Path, saved_modules: list[str], **fields) -> dict:
    """Write a stage's checkpoint: weights (and adapter) first, checkpoint_metadata.json last, each
    file atomically (temp name, fsync, rename, fsync of the directory). A stage directory that
    already holds a checkpoint stops being one (its metadata is removed) once the new weights are
    written under temporary names and before any of them replaces the old, so a kill at any point
    leaves either a complete, verifiable checkpoint or none, and a save that does not fit on the
    disk leaves the previous one as it was. `fields`: the remaining arguments of build_metadata."""
    stage_dir = Path(stage_dir)
    what = f"saving the {fields['stage']} stage's checkpoint"
    require_space(stage_dir, weights_bytes(model, saved_modules), what)
    with named_if_out_of_space(stage_dir, what):
        stage_dir.mkdir(parents=True, exist_ok=True)
        remove_leftovers(stage_dir)
        weight_files = save_weights(
            model, stage_dir, saved_modules, before_replace=lambda: unmark_checkpoint(stage_dir)
        )
        metadata = build_metadata(model=model, saved_modules=saved_modules, weight_files=weight_files, **fields)
        # Written last: a stage directory without it is not a checkpoint.
        write_json(stage_dir / layout.METADATA, metadata)
        (stage_dir / layout.SAVING).unlink()
        fsync_dir(stage_dir)
    return metadata


def unmark_checkpoint(stage_dir: Path) -> None:
    """The directory is no checkpoint from here on: marked as being saved (so that its weights are
    not taken for a checkpoint to rebuild from them alone), then its metadata removed."""
    write_text(Path(stage_dir) / layout.SAVING, "a save is replacing this checkpoint\n")
    metadata = Path(stage_dir) / layout.METADATA
    if metadata.exists():
        metadata.unlink()
        fsync_dir(Path(stage_dir))


def remove_leftovers(stage_dir: Path) -> None:
    """What an earlier, killed save left under temporary names (one process writes a run dir: it
    holds the run's lock)."""
    import shutil

    names = (layout.WEIGHTS, layout.ADAPTER_DIR, layout.METADATA, layout.SAVING)
    for path in Path(stage_dir).iterdir():
        if any(path.name.startswith((f".{n}.tmp-", f".{n}.old-")) for n in names):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


@dataclass
class StageResult:
    stage_dir: Path
    model: torch.nn.Module  # in eval mode, exactly as saved


def prepare_model(cfg: dict, name: str, stage, init_from: Path | None):
    """(model, its `_target_` tree, the modules its checkpoint saves, the trainable rows) of a stage:
    built (or rebuilt from `init_from`), the stage's LoRA attached, everything else frozen."""
    # Every stage starts from the same random state, whatever ran before it in this process
    # (a resumed run skips the stages it completed earlier).
    set_seed(int(cfg["seed"]))
    model, model_tree, saved_modules = start_model(cfg, init_from)
    log.info("resampler %s applied: %s", model.resampler.type_name, json.dumps(model_tree["resampler"]))
    attached = attach_stage_lora(model, stage)
    if attached:
        model_tree["lora"] = attached
    if int(stage.vision_trainable_blocks) != 0 and "vision" not in saved_modules:
        saved_modules.append("vision")
    rows = apply_freeze(model, stage)
    if cfg.get("gradient_checkpointing"):
        enable_gradient_checkpointing(model)
    if distributed.is_main_process():
        print(format_trainable(name, rows, model), flush=True)
    return model, model_tree, saved_modules, rows


def record_stage(cfg: dict, name: str, run_dir: Path, result, records: list[dict], examples: int) -> dict:
    """train_metrics.json and loss_curve.png of a finished stage; returns its summary."""
    losses = [r["loss"] for r in records if "loss" in r]
    summary = {
        "steps": result.global_step,
        "final_loss": losses[-1] if losses else None,
        "train_runtime_s": round(result.metrics.get("train_runtime", 0.0), 2),  # of the last attempt
        "examples": examples,
    }
    write_json(run_dir / name / layout.TRAIN_METRICS, summary | {"metrics": result.metrics})
    plot_losses(records, run_dir / name / layout.LOSS_PLOT, title=f"{run_dir.name} / {name}")
    return summary


def resume_point(stage_dir: Path, name: str) -> Path | None:
    """The newest complete resumable checkpoint an earlier attempt of the stage left, if any; the
    incomplete ones (an interrupted save) are removed."""
    checkpoint = resume.latest_checkpoint(stage_dir)
    if distributed.is_main_process():
        resume.remove_other_checkpoints(stage_dir / layout.RESUME_DIR, keep=checkpoint)
    distributed.barrier()
    if checkpoint is not None and distributed.is_main_process():
        print(f"stage {name}: resuming from step {resume.checkpoint_step(checkpoint)} ({checkpoint})", flush=True)
    return checkpoint


def stage_objective(model, stage: DictConfig, code_target) -> tuple[StageObjective, int]:
    """The stage's loss around the model, and how many first steps train the object codes alone."""
    objective = StageObjective(
        model,
        str(stage.objective),
        OmegaConf.to_container(stage.vicreg) if stage.vicreg else None,
        code_target=code_target,
        code_weight=float(stage.get("object_code_weight", 0.0)),
        grad_accum=int(stage.grad_accum),
    )
    code_warmup_steps = int(stage.get("object_code_warmup_steps", 0)) if code_target is not None else 0
    return objective, code_warmup_steps


def run_stage(
    cfg: dict,
    name: str,
    run_dir: Path,
    init_from: Path | None,
    signals: StopSignals | None = None,
    tracking: JobTracking | None = None,
) -> StageResult:
    """Train one stage into run_dir/name, resuming from its newest complete resumable checkpoint
    if an earlier attempt left one. Raises TrainingInterrupted when `signals` stopped it.
    `tracking`: the job's trackers (conf/logger), none when not given."""
    stage = OmegaConf.create(cfg["stage"][name])
    stage_dir = run_dir / name
    stage_dir.mkdir(parents=True, exist_ok=True)
    main = distributed.is_main_process()
    signals = signals or StopSignals()  # (not installed: nothing stops this stage early)
    model, model_tree, saved_modules, rows = prepare_model(cfg, name, stage, init_from)
    resume_dir = stage_dir / layout.RESUME_DIR
    args = training_arguments(
        stage, resume_dir, int(cfg["seed"]), *(cfg.get(k, d) for k, d in COMPUTE_SETTINGS.items())
    )
    # On the Trainer's device already: the frozen tower's features (the feature cache) are computed
    # on the stage's GPU, not on the CPU beside it.
    model.to(args.device)
    dataset, collator, code_target = stage_dataset(cfg, model, stage)

    checkpoint = resume_point(stage_dir, name)
    resume_step = resume.checkpoint_step(checkpoint) if checkpoint else None
    journal = JsonlLog(stage_dir / layout.TRAIN_LOG, resume_step)
    stop = StopOnSignal(signals)
    objective, code_warmup_steps = stage_objective(model, stage, code_target)
    warmup = [CodeWarmup(objective, code_warmup_steps)] if code_warmup_steps else []
    tracking = tracking or JobTracking({}, run_dir)
    with tracking.stage(name, stage_dir, resume_step, model, rows) as trackers:  # the stage's MLflow run ends here
        trainer = StageTrainer(
            model=objective,
            args=args,
            train_dataset=dataset,
            data_collator=collator,
            callbacks=[journal, resume.ResumableCheckpoints(), stop, *warmup, *trackers],
            schedule_phase_steps=code_warmup_steps,
        )
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        model.eval()
        if stop.signum and trainer.state.global_step < trainer.state.max_steps:
            raise TrainingInterrupted(
                stop.signum,
                f"stage {name} stopped at step {trainer.state.global_step} of {trainer.state.max_steps} with a "
                f"resumable checkpoint in {resume_dir}; {run_again(cfg)} to resume",
                signals.previous.get(stop.signum),
            )

    if main:
        summary = record_stage(cfg, name, run_dir, result, journal.records, len(dataset))
        save_stage_checkpoint(
            model,
            stage_dir,
            saved_modules,
            stage=name,
            seed=int(cfg["seed"]),
            model_tree=model_tree,
            tokenizer=dict(cfg["backbone"]["tokenizer"]),
            prompt=dict(cfg["prompt"]),
            data=dict(cfg["data"]),
            backbones=backbone_records(cfg),
            init_from=str(init_from) if init_from else None,
            trainable=rows,
            train_summary=summary,
            compute={k: cfg.get(k, d) for k, d in (COMPUTE_SETTINGS | RECORDED_COMPUTE).items()},
        )
        resume.remove_resume_dir(stage_dir)
        print(
            f"stage {name}: {summary['steps']} steps, final loss {summary['final_loss']}, saved to {stage_dir}",
            flush=True,
        )
    distributed.barrier()  # the next stage (on every process) starts from these files
    return StageResult(stage_dir, model)
