"""The loop is transformers' Trainer; we supply the objective, the data and a log of our own.

Resuming uses the Trainer's own machinery (save_steps, resume_from_checkpoint); its checkpoints
hold the trainable weights only (the frozen ones are rebuilt from the config or the previous
stage), and they load strictly."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments, get_scheduler
from transformers.utils import SAFE_WEIGHTS_NAME

from vlm_resampler.runs.atomic import write_text
from vlm_resampler.runs.checkpoint import _check_state
from vlm_resampler.runs.disk_space import DiskFullError, named_if_out_of_space, require_space, tensor_bytes
from vlm_resampler.training import distributed, resume
from vlm_resampler.training.losses import next_token_loss, object_code_loss, overlap_vicreg_loss, visual_embeddings_of

if TYPE_CHECKING:
    from vlm_resampler.models.object_codes import ObjectCodes


class StageObjective(nn.Module):
    """The stage's loss as the forward of a module around the model, so that under DDP the
    loss is computed through the wrapper's forward, which DDP synchronises.

    `code_target` (a CodeTarget) adds `code_weight` x object_code_loss between the batch's visual
    embeddings and its object-code layout to the next-token loss."""

    accepts_loss_kwargs = True  # the Trainer then counts answer tokens across accumulation steps and processes

    def __init__(
        self,
        model: nn.Module,
        objective: str,
        vicreg: dict | None = None,
        code_target: CodeTarget | None = None,
        code_weight: float = 0.0,
        grad_accum: int = 1,
    ) -> None:
        super().__init__()
        if objective not in ("overlap_vicreg", "next_token"):
            raise ValueError(f"objective={objective!r}: expected overlap_vicreg or next_token")
        self.model = model
        self.objective = objective
        self.vicreg = vicreg
        self.code_target = code_target
        self.code_weight = float(code_weight)
        # The Trainer adds up the micro-batches' losses and multiplies by the number of processes
        # (it expects a sum over the step's answer tokens, like next_token_loss with num_items); a
        # per-batch mean must be divided by both to weigh the same however the step is split.
        self.mean_loss_scale = 1.0 / (int(grad_accum) * distributed.world_size())
        self.code_only = False  # set per step by CodeWarmup: the object-code loss alone, no LLM pass

    def forward(self, num_items_in_batch=None, **batch) -> dict[str, torch.Tensor]:
        if self.objective == "overlap_vicreg":
            loss, terms = overlap_vicreg_loss(self.model, batch, self.vicreg)
            return {"loss": loss, **terms}
        visual = visual_embeddings_of(self.model, batch)
        scale = self.mean_loss_scale if num_items_in_batch is not None else 1.0
        code = (
            None
            if self.code_target is None
            else object_code_loss(visual, self.code_target(batch["facts"]).to(visual.dtype))
        )
        if self.code_only:
            return {"loss": self.code_weight * scale * code, "object_code_loss": code.detach()}
        loss, terms = next_token_loss(self.model, batch, num_items_in_batch, visual)
        if code is not None:
            terms = {"answer_loss": loss.detach(), "object_code_loss": code.detach()}
            loss = loss + self.code_weight * scale * code
        return {"loss": loss, **terms}


class CodeWarmup(TrainerCallback):
    """The first `steps` optimizer steps train on the object-code loss alone (no LLM forward: a
    fraction of a step's cost), then answer loss + object-code loss. Resuming restores the step."""

    def __init__(self, objective: StageObjective, steps: int) -> None:
        self.objective, self.steps = objective, int(steps)

    def on_step_begin(self, args, state, control, **kwargs):
        self.objective.code_only = state.global_step < self.steps


class CodeTarget(nn.Module):
    """What a stage's visual embeddings regress onto: the object codes of the frozen code-reading
    LLM, laid out as the model lays out its visual tokens (tokens per view, separators)."""

    def __init__(self, model: nn.Module, codes: ObjectCodes) -> None:
        super().__init__()
        from vlm_resampler.data.object_facts import view_directions

        stitch = model.stitch
        if stitch.mode != "concat":
            raise ValueError(
                f"an object-code target needs stitch=concat (every view's tokens in order), not {stitch.mode}"
            )
        if codes.width != model.llm.get_input_embeddings().embedding_dim:
            raise ValueError(
                f"object codes of width {codes.width} for an LLM of width "
                f"{model.llm.get_input_embeddings().embedding_dim}"
            )
        self.codes = codes.requires_grad_(False)
        self.tokens_per_view = int(model.tokens_per_view)
        self.separators = stitch.separator is not None
        yaws = [m.yaw_deg for m in model.views.metadata()]
        self.register_buffer("directions", torch.tensor(view_directions(yaws)), persistent=False)

    def forward(self, facts: torch.Tensor) -> torch.Tensor:
        view_codes = self.codes.view_codes(facts, self.directions)
        return self.codes.sequence(view_codes, self.tokens_per_view, separators=self.separators)


def trainable_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


def phased_schedule(optimizer, args: TrainingArguments, phase_steps: int, num_training_steps: int):
    """The stage's learning-rate schedule run twice: over the first `phase_steps` steps (the
    object-code warm-up), then again from the start over the rest (answer + code loss). With one
    schedule over both, a cosine has decayed to a tenth of the rate by the time the answer loss
    starts (measured: 1e-4 of 1e-3 at step 3,000 of 3,600) and to zero after, so the second phase
    would barely train."""
    phases = (phase_steps, num_training_steps - phase_steps)
    # Each phase's multiplier, read off the stage's own scheduler type built over that phase alone.
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedules = [
        get_scheduler(
            args.lr_scheduler_type,
            optimizer=probe,
            num_warmup_steps=args.get_warmup_steps(n),
            num_training_steps=n,
            scheduler_specific_kwargs=args.lr_scheduler_kwargs,
        )
        for n in phases
    ]
    if not all(isinstance(s, torch.optim.lr_scheduler.LambdaLR) for s in schedules):
        raise ValueError(
            f"lr_scheduler={args.lr_scheduler_type!r} is not a fixed per-step schedule, so it cannot restart when the "
            "object-code warm-up ends: use cosine, linear, constant or another step schedule, or object_code_warmup_steps=0"
        )
    factors = [s.lr_lambdas[0] for s in schedules]

    def factor(step: int) -> float:
        return factors[0](step) if step < phase_steps else factors[1](step - phase_steps)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class StageTrainer(Trainer):
    """Trainer of a StageObjective; extra loss terms are averaged into the log.

    `schedule_phase_steps` > 0 restarts the learning-rate schedule after that many steps
    (phased_schedule): the object-code warm-up and the steps after it each get the whole schedule."""

    def __init__(self, *args, schedule_phase_steps: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._terms: dict[str, list[float]] = {}
        self.schedule_phase_steps = int(schedule_phase_steps)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None and 0 < self.schedule_phase_steps < num_training_steps:
            self.lr_scheduler = phased_schedule(
                optimizer or self.optimizer, self.args, self.schedule_phase_steps, num_training_steps
            )
            return self.lr_scheduler
        return super().create_scheduler(num_training_steps, optimizer)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if not torch.isfinite(loss):
            objective = self.model.objective
            raise FloatingPointError(f"non-finite {objective} loss at step {self.state.global_step}: {loss.item()}")
        for name, value in outputs.items():
            if name != "loss":
                self._terms.setdefault(name, []).append(float(value))
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        for name, values in self._terms.items():
            if values:
                logs[name] = round(sum(values) / len(values), 6)
        self._terms = {}
        super().log(logs, *args, **kwargs)

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's resumable checkpoint, first checked for room (the trainable weights and
        AdamW's two moments); one that fails for lack of space is removed, so it frees what it took."""
        folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        what = f"saving the resumable checkpoint of step {self.state.global_step}"
        if self.args.should_save:
            require_space(folder, 3 * tensor_bytes(trainable_parameters(self.model).values()), what)
        try:
            with named_if_out_of_space(folder, what):
                super()._save_checkpoint(model, trial)
        except DiskFullError:
            if self.args.should_save and folder.exists() and not resume.is_complete(folder):
                shutil.rmtree(folder)
            raise

    # A resumable checkpoint's weights: the trainable parameters only, loaded strictly.
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not self.args.should_save:
            return
        out = Path(output_dir or self.args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in trainable_parameters(self.model).items()}
        save_file(state, str(out / SAFE_WEIGHTS_NAME), metadata={"format": "pt"})

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        params = trainable_parameters(model if model is not None else self.model)
        path = Path(resume_from_checkpoint) / SAFE_WEIGHTS_NAME
        found = load_file(str(path))
        _check_state(str(path), {k: p.detach() for k, p in params.items()}, found)
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(found[name])


class JsonlLog(TrainerCallback):
    """Every Trainer log line, appended to train_log.jsonl as it happens (by rank 0), with `seconds`:
    wall time since this process began training (a resumed run counts from its resume).

    Resuming at step N keeps the lines up to N (the rest was logged after that checkpoint)."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.records: list[dict] = []
        if resume_step is not None and self.path.is_file():
            lines = self.path.read_text(encoding="utf-8").splitlines()
            self.records = [r for r in map(json.loads, filter(None, lines)) if r["step"] <= resume_step]
        if distributed.is_main_process():
            write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        # A logged loss has been read back from the device, so the time is the step's, not its launch's.
        record = {"step": state.global_step, **(logs or {}), "seconds": round(time.perf_counter() - self.started, 4)}
        self.records.append(record)
        if state.is_world_process_zero:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def training_arguments(
    stage, output_dir: Path, seed: int, precision: str = "fp32", dataloader_workers: int = 0
) -> TrainingArguments:
    """`output_dir` receives the resumable checkpoints (checkpoint-<step>/)."""
    from vlm_resampler.training.precision import trainer_flags

    return TrainingArguments(
        **trainer_flags(precision),
        output_dir=str(output_dir),
        per_device_train_batch_size=distributed.per_process_batch(int(stage.batch_size), str(stage.name)),
        gradient_accumulation_steps=int(stage.grad_accum),
        num_train_epochs=float(stage.epochs),
        max_steps=int(stage.max_steps),
        learning_rate=float(stage.lr),
        weight_decay=float(stage.weight_decay),
        warmup_steps=float(stage.warmup_ratio),
        lr_scheduler_type=str(stage.lr_scheduler),
        max_grad_norm=float(stage.max_grad_norm),
        logging_steps=int(stage.logging_steps),
        logging_first_step=True,
        save_strategy="steps",
        save_steps=int(stage.save_steps),
        save_total_limit=None,  # ResumableCheckpoints keeps the newest complete one
        ignore_data_skip=False,  # on resume, skip the batches already trained on (same seeded order)
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=dataloader_workers,
        remove_unused_columns=False,
        label_names=["labels"],
        seed=seed,
        data_seed=seed,
        disable_tqdm=False,
    )
