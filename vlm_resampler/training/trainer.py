"""The loop is transformers' Trainer; we supply the objective, the data and a log of our own."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from vlm_resampler.training.losses import next_token_loss, overlap_vicreg_loss


class StageTrainer(Trainer):
    """Trainer whose loss is the stage's objective; extra loss terms are averaged into the log."""

    def __init__(self, *args, objective: str, vicreg: dict | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.objective = objective
        self.vicreg = vicreg
        self._terms: dict[str, list[float]] = {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.objective == "overlap_vicreg":
            loss, terms = overlap_vicreg_loss(model, inputs["panoramas"], self.vicreg)
        elif self.objective == "next_token":
            loss, terms = next_token_loss(model, inputs)
        else:
            raise ValueError(f"objective={self.objective!r}: expected overlap_vicreg or next_token")
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite {self.objective} loss at step {self.state.global_step}: {loss.item()}")
        for name, value in terms.items():
            self._terms.setdefault(name, []).append(float(value))
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        for name, values in self._terms.items():
            if values:
                logs[name] = round(sum(values) / len(values), 6)
        self._terms = {}
        super().log(logs, *args, **kwargs)


class JsonlLog(TrainerCallback):
    """Every Trainer log line, appended to train_log.jsonl as it happens."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.records: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        record = {"step": state.global_step, **(logs or {})}
        self.records.append(record)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def training_arguments(stage, output_dir: Path, seed: int) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=int(stage.batch_size),
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
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        remove_unused_columns=False,
        label_names=["labels"],
        seed=seed,
        data_seed=seed,
        disable_tqdm=False,
    )
