"""The loop is transformers' Trainer; we supply the objective, the data and a log of our own.

Resuming uses the Trainer's own machinery (save_steps, resume_from_checkpoint); its checkpoints
hold the trainable weights only (the frozen ones are rebuilt from the config or the previous
stage), and they load strictly."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.utils import SAFE_WEIGHTS_NAME

from vlm_resampler.runs.atomic import write_text
from vlm_resampler.runs.checkpoint import _check_state
from vlm_resampler.training import distributed
from vlm_resampler.training.losses import next_token_loss, overlap_vicreg_loss


class StageObjective(nn.Module):
    """The stage's loss as the forward of a module around the model, so that under DDP the
    loss is computed through the wrapper's forward, which DDP synchronises."""

    accepts_loss_kwargs = True  # the Trainer then counts answer tokens across accumulation steps and processes

    def __init__(self, model: nn.Module, objective: str, vicreg: dict | None = None) -> None:
        super().__init__()
        if objective not in ("overlap_vicreg", "next_token"):
            raise ValueError(f"objective={objective!r}: expected overlap_vicreg or next_token")
        self.model = model
        self.objective = objective
        self.vicreg = vicreg

    def forward(self, num_items_in_batch=None, **batch) -> dict[str, torch.Tensor]:
        if self.objective == "overlap_vicreg":
            loss, terms = overlap_vicreg_loss(self.model, batch["panoramas"], self.vicreg)
        else:
            loss, terms = next_token_loss(self.model, batch, num_items_in_batch)
        return {"loss": loss, **terms}


def trainable_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


class StageTrainer(Trainer):
    """Trainer of a StageObjective; extra loss terms are averaged into the log."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._terms: dict[str, list[float]] = {}

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
    """Every Trainer log line, appended to train_log.jsonl as it happens (by rank 0).

    Resuming at step N keeps the lines up to N (the rest was logged after that checkpoint)."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.records: list[dict] = []
        if resume_step is not None and self.path.is_file():
            lines = self.path.read_text(encoding="utf-8").splitlines()
            self.records = [r for r in map(json.loads, filter(None, lines)) if r["step"] <= resume_step]
        if distributed.is_main_process():
            write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def on_log(self, args, state, control, logs=None, **kwargs):
        record = {"step": state.global_step, **(logs or {})}
        self.records.append(record)
        if state.is_world_process_zero:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def training_arguments(stage, output_dir: Path, seed: int) -> TrainingArguments:
    """`output_dir` receives the resumable checkpoints (checkpoint-<step>/)."""
    return TrainingArguments(
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
        dataloader_num_workers=0,
        remove_unused_columns=False,
        label_names=["labels"],
        seed=seed,
        data_seed=seed,
        disable_tqdm=False,
    )
