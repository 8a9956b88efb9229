"""The report as a table: one column per source, rows in a fixed order, values that differ between
sources marked."""

from __future__ import annotations

import json

# ---------------------------------------------------------------------------------------------
# Text output: one table, one value column per config.
# ---------------------------------------------------------------------------------------------


def _value(v) -> str:
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, list):
        return ", ".join(map(str, v))
    return str(v)


Row = tuple[str, str, str, str]  # (group, key, label, value); a header row has group == key


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def planned_for_gpu(report: dict) -> bool:
    """Whether the report's memory plans are for a GPU (inspect --gpu-mem)."""
    return any("gpu_gib" in report["memory"][name] for name in report["stages"])


def report_rows(report: dict) -> list[Row]:
    """The rows of one report. Keys are shared across reports, so configs line up in --compare."""
    rows: list[Row] = []

    def header(section: str, label: str | None = None) -> None:
        rows.append((section, section, label or section, ""))

    def add(section: str, label: str, value, group: str | None = None, indent: int = 1) -> None:
        rows.append((group or section, f"{section}/{label}", "  " * indent + label, _value(value)))

    vision, llm = report["backbones"]["vision"], report["backbones"]["llm"]
    header("model")
    add("model", "resampler", report["resampler_type"])
    add("model", "vision encoder", vision["name_or_path"])
    add("model", "vision width, patch", f"{vision['hidden_size']}, {vision['patch_size']}")
    add("model", "language model", llm["name_or_path"])
    add("model", "llm width", llm["hidden_size"])
    lora = report["lora"]
    add("model", "lora", f"r={lora['r']}, {len(lora['target_modules'])} target modules" if lora else "none")

    header("resampler", "resampler (resolved)")
    for key, value in report["resampler"].items():
        if key != "_target_":
            add("resampler", key, value)

    header("parameters")
    for module in (m for m in report["parameters"] if m != "total"):
        add("parameters", module, report["parameters"][module])
        if module == "resampler":
            for part, n in report["resampler_parts"].items():
                rows.append(("parameters/resampler.", f"parameters/resampler.{part}", "      " + part, _value(n)))
                if part in report["resampler_repeated"]:
                    copies, each = report["resampler_repeated"][part]
                    rows.append(
                        (
                            "parameters/resampler.",
                            f"parameters/resampler.{part}/each",
                            f"        each of the {part}",
                            f"{each:,} (x{copies})",
                        )
                    )
    add("parameters", "total", report["parameters"]["total"])

    t = report["tokens"]
    header("tokens")
    add("tokens", "views per image", t["num_views"])
    add(
        "tokens",
        "vision tokens per view",
        f"{t['vision_tokens_per_view']:,} ({t['view_grid'][0]}x{t['view_grid'][1]} patches)",
    )
    add("tokens", "resampler tokens per view", t["tokens_per_view"])
    add("tokens", "tokens per image (to the LLM)", t["tokens_per_image"])

    for name, stage in report["stages"].items():
        section = f"stage {name}"
        header(section)
        for group, n in stage["trainable"].items():
            add(section, f"trains {group}", n, group=f"{section}/trains")
        add(section, "trainable", stage["trainable_total"])
        add(section, "frozen", stage["frozen"])
        rows += memory_rows(section, report["memory"][name], report["memory"]["compute"])
    if planned_for_gpu(report):
        rows += host_rows(report["host_memory"])
    return rows


def host_rows(plan: dict) -> list[Row]:
    """Each GPU's training process in the host's memory while it loads (inspection/host_memory.py)."""
    section = "host memory"
    rows: list[Row] = [(section, section, "host memory (each GPU's process, while it loads)", "")]
    for part, label in (("vision", "vision checkpoint"), ("llm", "llm checkpoint")):
        entry = plan["backbones"][part]
        value = f"{entry['stored'] or 'unknown dtype'}, {entry['how']}: {gib(entry['bytes'])}"
        rows.append((section, f"{section}/{part}", f"  {label}", value))
    rows.append((section, f"{section}/runtime", "  runtime (allowance)", gib(plan["runtime"])))
    rows.append((section, f"{section}/per_process", "  per process", gib(plan["per_process"])))
    if plan["shared_features"]:
        rows.append((section, f"{section}/features", "  cached features, once per node", gib(plan["shared_features"])))
    return rows


def memory_rows(section: str, plan: dict, compute: dict) -> list[Row]:
    """The stage's memory plan (inspection/memory.py), in GiB."""
    where = f"GPU {plan['gpu_gib']:g} GiB" if "gpu_gib" in plan else "this CPU"
    settings = f"batch {plan['batch_size']}, {compute['precision']}, {compute['attn_implementation']} attention" + (
        ", gradient checkpointing" if compute["gradient_checkpointing"] else ""
    )
    key = f"{section}/memory"
    rows = [(key, f"{key}/title", "  memory plan", f"{settings}; {where}")]
    parts = ("weights", "gradients", "optimizer", "activations", "tower_working", "feature_cache", "runtime")
    for part in (*parts, "step_peak"):
        rows.append((key, f"{key}/{part}", f"    {part.replace('_', ' ')}", gib(plan[part])))
    features = plan["vision_features"]
    rows.append((key, f"{key}/features", "    vision features", f"{features['how']} ({features['why']})"))
    if plan["feature_pass_peak"]:
        rows.append((key, f"{key}/feature_pass", "    feature pass peak", gib(plan["feature_pass_peak"])))
    rows.append((key, f"{key}/peak", "    peak", gib(plan["peak"])))
    if "fits" in plan:
        largest = plan["largest_batch"]
        rows.append((key, f"{key}/fits", "    fits", "yes" if plan["fits"] else "no"))
        rows.append((key, f"{key}/largest", "    largest batch that fits", "-" if largest is None else f"{largest:,}"))
    return rows


def fitting_notes(report: dict) -> list[str]:
    """A line per stage that does not fit its GPU: the settings under which it would."""
    notes = []
    for name in report["stages"]:
        plan = report["memory"][name]
        if "fits_with" not in plan:
            continue
        ways = [f"{' '.join(way['overrides'])} (peak {gib(way['peak'])})" for way in plan["fits_with"]]
        at = f"stage {name} does not fit {plan['gpu_gib']:g} GiB at batch {plan['batch_size']}"
        notes.append(
            f"{at}; it would with " + " | ".join(ways) if ways else f"{at}, nor with grad_accum, bf16 or checkpointing"
        )
    return notes


def merge_rows(all_rows: list[list[Row]]) -> list[Row]:
    """The union of several reports' rows, in the first report's order. A row that earlier reports
    lack goes after the last row of its group (a resampler parameter only one type has: at the end
    of that section), or after the row that precedes it in its own report."""
    merged: list[Row] = list(all_rows[0]) if all_rows else []
    for rows in all_rows[1:]:
        keys = [row[1] for row in merged]
        previous = None
        for row in rows:
            group, key = row[0], row[1]
            if key not in keys:
                in_group = [i for i, r in enumerate(merged) if r[0] == group or r[0].startswith(group + "/")]
                at = in_group[-1] + 1 if in_group else (keys.index(previous) + 1 if previous else len(merged))
                merged.insert(at, row)
                keys.insert(at, key)
            previous = key
    return merged


def render(reports: list[dict]) -> str:
    all_rows = [report_rows(r) for r in reports]
    values = [{key: value for _, key, _, value in rows} for rows in all_rows]
    merged = merge_rows(all_rows)
    headers = (
        [r["source"]["label"] for r in reports] if len(reports) == 1 else [f"[{i + 1}]" for i in range(len(reports))]
    )
    label_width = max(len(label) for _, _, label, _ in merged)
    widths = [max([len(h)] + [len(v.get(key, "-")) for _, key, _, _ in merged]) for h, v in zip(headers, values)]
    lines = []
    if len(reports) > 1:
        lines += [f"[{i + 1}] {r['source']['label']}" for i, r in enumerate(reports)] + [""]
    lines.append(" " * label_width + "".join(f"  {h:>{w}}" for h, w in zip(headers, widths)))
    for group, key, label, _ in merged:
        if group == key:
            lines.append(label)
        else:
            lines.append(
                f"{label:<{label_width}}" + "".join(f"  {v.get(key, '-'):>{w}}" for v, w in zip(values, widths))
            )
    for i, report in enumerate(reports):
        prefix = f"[{i + 1}] " if len(reports) > 1 else ""
        lines += [f"note: {prefix}{note}" for note in report["notes"] + fitting_notes(report)]
    lines.append("(exact counts of the model built on the meta device: no weights were loaded or allocated)")
    lines.append(
        "(memory plans are computed, not measured: float32 weights, AdamW, activations by layer widths and token "
        "counts; vlm_resampler/inspection/memory.py; choose the GPU with --gpu-mem, the batch with --batch-size)"
    )
    if any(planned_for_gpu(report) for report in reports):
        lines.append(
            "(host memory: what a node's --mem must hold for each GPU's process while it loads, the cached features "
            "once; vlm_resampler/inspection/host_memory.py)"
        )
    return "\n".join(lines)
