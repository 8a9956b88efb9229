"""The plain-text tables an eval prints (torch-free: the CSV scoring path prints them too)."""

from __future__ import annotations

from vlm_resampler.evaluation.intervals import cider_interval_line, interval_text

TABLE_METRICS = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


def scores_table(rows: list[tuple[str, dict]], names: tuple[str, ...] = TABLE_METRICS) -> str:
    lines = [f"{'':<18}" + "".join(f"{n:>10}" for n in names)]
    for label, scores in rows:
        lines.append(f"{label:<18}" + "".join(f"{scores.get(n, float('nan')):>10.4f}" for n in names))
    return "\n".join(lines)


def summary_table(results: dict) -> str:
    rows = [("model", results["model"])] + list(results.get("baselines", {}).items())
    lines = [
        f"{results['dataset']}/{results['split']}: {results['n_items']} items, stage {results['stage']}",
        scores_table(rows),
    ]
    intervals = results.get("intervals")
    if intervals:
        lines.append(cider_interval_line(results))
    for name, subset in results.get("subsets", {}).items():
        lines.append(
            f"  {name} subset ({subset['n_items']} items): BLEU-4 {subset['BLEU-4']:.4f}, CIDEr {subset['CIDEr']:.4f}"
        )
    qa = results.get("qa")
    if qa and qa["n_items"]:
        kinds = ", ".join(f"{k} {v['exact_match']:.3f}" for k, v in qa["by_kind"].items())
        lines.append(
            f"question answering: exact match {qa['exact_match']:.3f}{interval_text(intervals, 'QA')} "
            f"on {qa['n_items']} questions ({kinds})"
        )
    dependence = results.get("image_dependence")
    if dependence:
        lines.append(
            f"image dependence: answer loss {dependence['answer_loss']:.4f} with its own panorama, "
            f"{dependence['answer_loss_images_rotated']:.4f} with another's "
            f"(gap {dependence['gap']:+.4f}{interval_text(intervals, 'image_gap', 4)})"
        )
    generation = results.get("generation")
    if generation:
        # (an eval written before device and precision were recorded has neither)
        where = "".join(
            f" {word} {generation[key]}" for word, key in (("on", "device"), ("in", "precision")) if key in generation
        )
        lines.append(
            f"generation: {generation['items_per_s']:.2f} items/s, {generation['tokens_per_s']:.1f} "
            f"generated tokens/s at batch {generation['batch_size']}{where} ({generation['decoding']})"
        )
    for name, reason in results.get("unavailable", {}).items():
        lines.append(f"{name} not computed: {reason}")
    return "\n".join(lines)
