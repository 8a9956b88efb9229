#!/usr/bin/env python
"""Generated tokens per second of eval generation at batch 1 and at batch 16, in one run.

    python launch/bench_eval.py                      # the offline default model
    python launch/bench_eval.py resampler=perceiver  # any train.py override picks the model

The model is the offline default's architecture, untrained: throughput depends on the shapes,
not on what the weights have learnt, and this needs no training run. Every row is forced to
the same length (min_new_tokens = max_new_tokens) so both batch sizes decode the same work;
the tokens counted are those generate_tokens returns, i.e. produced before the end-of-turn
token, never padding. Timing covers the whole eval generate call (views, vision encoder,
resampler, prefill and decoding), as an eval spends it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def device_setting(value: str) -> str:
    from vlm_resampler.evaluation.settings import DEVICE_SETTING

    if not DEVICE_SETTING.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r}: expected auto, cpu, cuda or cuda:<index>")
    return value


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=32, help="panoramas generated for at each batch size")
    parser.add_argument(
        "--new-tokens",
        type=int,
        default=None,
        help="tokens generated per item (forced); default: conf/eval.yaml's max_new_tokens, the length an eval allows",
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--device",
        type=device_setting,
        default="auto",
        help="where to generate, as eval's device= (default auto: the GPU if there is one)",
    )
    return parser.parse_known_args(argv)


def main(argv: list[str]) -> None:
    from vlm_resampler.config.preflight import backbone_names, compose
    from vlm_resampler.hub import configure_hub_access

    args, overrides = parse_args(argv)
    if args.new_tokens is None:
        # The vision path is a per-item cost batching does not shrink, so the ratio depends on how
        # many tokens each item decodes: measure at the length an eval actually allows.
        from omegaconf import OmegaConf

        from vlm_resampler.catalog import CONF_DIR

        args.new_tokens = int(OmegaConf.load(CONF_DIR / "eval.yaml").max_new_tokens)
    cfg = compose("train", overrides)
    configure_hub_access(backbone_names([cfg]))

    import torch

    from vlm_resampler.data.collate import PromptCollator
    from vlm_resampler.data.prompts import PromptFormat
    from vlm_resampler.evaluation.device import describe, eval_device
    from vlm_resampler.evaluation.generate import generate_tokens
    from vlm_resampler.evaluation.settings import GenerationSettings
    from vlm_resampler.models.backbones import load_tokenizer
    from vlm_resampler.runs.load import build_model
    from vlm_resampler.training.run import resolved_container

    if args.threads:
        torch.set_num_threads(args.threads)
    tree = resolved_container(cfg)
    device = eval_device(args.device)
    model = build_model(tree["model"], seed=0).eval().to(device)
    tokenizer = load_tokenizer(tree["backbone"]["tokenizer"]["name_or_path"])
    collate = PromptCollator(tokenizer, PromptFormat(**tree["prompt"]))
    settings = GenerationSettings(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
    generator = torch.Generator().manual_seed(0)
    height, width = int(tree["data"]["erp_height"]), int(tree["data"]["erp_width"])
    examples = [
        {"panorama": torch.rand(3, height, width, generator=generator), "query": tree["data"]["query"]}
        for _ in range(args.items)
    ]
    print(
        f"model: {type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} parameters "
        f"(untrained, {tree['backbone']['name']} backbones), {model.tokens_per_image} visual tokens per panorama; "
        f"{args.items} items x {args.new_tokens} new tokens; on {describe(device)}, torch threads {torch.get_num_threads()}"
    )

    generate_tokens(model, tokenizer, collate(examples[:2]), settings)  # warm-up: first-call allocations
    rates, cpu_rates = {}, {}
    for batch_size in args.batch_sizes:
        generated, started, cpu_started = 0, time.perf_counter(), time.process_time()
        for start in range(0, len(examples), batch_size):
            rows = generate_tokens(model, tokenizer, collate(examples[start : start + batch_size]), settings)
            generated += sum(len(r) for r in rows)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        if generated != len(examples) * args.new_tokens:
            raise RuntimeError(
                f"batch {batch_size}: {generated} tokens generated, expected "
                f"{len(examples) * args.new_tokens}: min_new_tokens did not hold the length"
            )
        rates[batch_size], cpu_rates[batch_size] = generated / elapsed, generated / cpu
        print(
            f"batch {batch_size:>3}: {generated} generated tokens in {elapsed:.2f} s = {rates[batch_size]:.1f} tokens/s "
            f"({len(examples) / elapsed:.2f} items/s; {cpu:.2f} CPU s, {cpu_rates[batch_size]:.1f} tokens per CPU s)"
        )
    low, high = min(args.batch_sizes), max(args.batch_sizes)
    # On a shared machine wall time also measures the neighbours; CPU time shows the work alone.
    print(
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; per CPU second, batch {high} vs {low}: "
        f"{cpu_rates[high] / cpu_rates[low]:.1f}x"
    )
    print(f"batching speedup: {rates[high] / rates[low]:.1f}x")


if __name__ == "__main__":
    main(sys.argv[1:])
