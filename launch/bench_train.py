#!/usr/bin/env python
"""Training samples per second of the resampler and finetune stages: the path before the frozen
tower's features were cached and the output layer ran at real answer positions only, against
today's, in one run.

    python launch/bench_train.py                       # the offline default
    python launch/bench_train.py experiment=demo       # any train.py override picks the model
    python launch/bench_train.py --threads 1 2         # and the thread counts to compare

"before": every step cuts the views and runs the vision tower, and the vocabulary-sized output
layer runs on batch x (longest answer + 1) positions, padding included. "today": cached view
features, output layer at the answer positions only. Both take real optimizer steps (the stage's
trainable parameters, AdamW) on the same batches of SynthPano's training examples.
"""

from __future__ import annotations

import argparse
import sys
import time


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per path (after 3 warm-up steps)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    return parser.parse_known_args(argv)


def logits_before(model, visual, input_ids, attention_mask, labels):
    """The output layer as it ran before: on the last (longest answer + 1) positions of every row."""
    import torch

    spliced = model.splice(input_ids, attention_mask, visual, labels)
    length = spliced["labels"].shape[1]
    answer_len = int((spliced["labels"] != -100).sum(dim=1).max())
    predicting = torch.arange(length - answer_len - 1, length - 1)
    out = model.llm(
        inputs_embeds=spliced["inputs_embeds"],
        attention_mask=spliced["attention_mask"],
        position_ids=spliced["position_ids"],
        logits_to_keep=predicting,
        use_cache=False,
    )
    return out.logits.flatten(0, 1), spliced["labels"][:, -answer_len:].flatten()


def main(argv: list[str]) -> None:
    from vlm_resampler.config.preflight import backbone_names, compose
    from vlm_resampler.hub import configure_hub_access

    args, overrides = parse_args(argv)
    cfg = compose("train", overrides)
    configure_hub_access(backbone_names([cfg]))

    import torch
    import torch.nn.functional as F
    from omegaconf import OmegaConf

    from vlm_resampler.data.collate import CaptionCollator
    from vlm_resampler.data.datasets import CaptionExamples, training_items
    from vlm_resampler.data.prompts import PromptFormat
    from vlm_resampler.models.backbones import load_tokenizer
    from vlm_resampler.runs.load import build_model
    from vlm_resampler.training.feature_cache import cached_features, tower_fingerprint
    from vlm_resampler.training.losses import visual_embeddings_of
    from vlm_resampler.training.run import resolved_container
    from vlm_resampler.training.stages import apply_freeze, attach_stage_lora

    tree = resolved_container(cfg)
    data = OmegaConf.create(tree["data"])
    items = training_items(data)
    width, height = int(data.erp_width), int(data.erp_height)
    tokenizer = load_tokenizer(tree["backbone"]["tokenizer"]["name_or_path"])
    collate = CaptionCollator(tokenizer, PromptFormat(**tree["prompt"]), int(data.max_answer_tokens))
    needed = (args.steps + 3) * args.batch_size
    generator = torch.Generator().manual_seed(0)
    rows = torch.randperm(sum(len(i["references"]) for i in items), generator=generator)[:needed].tolist()

    rows_out = []
    for name in ("resampler", "finetune"):
        stage = OmegaConf.create(tree["stage"][name])
        model = build_model(tree["model"], seed=0)
        attach_stage_lora(model, stage)
        apply_freeze(model, stage)
        features = cached_features(
            model, tower_fingerprint(model.vision), [str(i["image"]) for i in items], width, height
        )
        for path, table in (("before", None), ("today", features)):
            dataset = CaptionExamples(items, width, height, table)
            batches = [
                collate([dataset[r] for r in rows[k : k + args.batch_size]]) for k in range(0, needed, args.batch_size)
            ]
            for threads in args.threads:
                torch.set_num_threads(threads)
                model.train()
                optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
                started = None
                for step, batch in enumerate(batches):
                    if step == 3:
                        started = time.perf_counter()
                    visual = visual_embeddings_of(model, batch)
                    args_ = (visual, batch["input_ids"], batch["attention_mask"], batch["labels"])
                    logits, targets = logits_before(model, *args_) if path == "before" else model.answer_logits(*args_)
                    F.cross_entropy(logits.float(), targets, ignore_index=-100).backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                elapsed = time.perf_counter() - started
                rows_out.append((name, path, threads, args.steps * args.batch_size / elapsed))
                print(f"{name:<10} {path:<7} threads {threads}: {rows_out[-1][3]:8.1f} samples/s", flush=True)

    print("\nstage       threads   before (samples/s)   today (samples/s)   today / before")
    for name in ("resampler", "finetune"):
        for threads in args.threads:
            before = next(r[3] for r in rows_out if r[:3] == (name, "before", threads))
            today = next(r[3] for r in rows_out if r[:3] == (name, "today", threads))
            print(f"{name:<10} {threads:>8} {before:>20.1f} {today:>19.1f} {today / before:>16.2f}x")


if __name__ == "__main__":
    main(sys.argv[1:])
