"""launch/inspect.py: exact parameter counts (checked against a hand count and against a real
build), per-stage trainable sets from the trainer's own freeze matrix, tokens per view and
image, run and stage directories, --compare, --json, and the same config errors as train.py."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from vlm_resampler.inspection.counts import inspect_source
from vlm_resampler.inspection.sources import source_from_args

from conftest import REPO_ROOT, inspect_in_process, run_cli

# The offline default backbones (conf/backbone/tiny.yaml): tiny SigLIP and tiny Qwen3.
VISION_WIDTH = 64  # the resampler's input_dim
LLM_WIDTH = 64
LLM_LAYERS = 2
HEAD_DIM = 16
Q_OUT, KV_OUT, MLP_WIDTH, VOCAB = 4 * 16, 2 * 16, 128, 151_936  # 4 query heads, 2 kv heads of 16; tied embeddings


def report(*overrides: str) -> dict:
    return inspect_source(source_from_args(list(overrides)))


# ---- hand counts, one term per tensor --------------------------------------------------------


def linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def layer_norm(width: int) -> int:
    return 2 * width  # weight + bias


def mlp_resampler(d_in: int, latent: int, hidden: int, depth: int, use_ln: bool) -> int:
    widths = [d_in] + [hidden] * (depth - 1) + [latent]
    total = sum(linear(widths[i], widths[i + 1]) for i in range(depth))
    return total + (depth - 1) * (layer_norm(hidden) if use_ln else 0)  # dropout/GELU: no parameters


def mamba_mixer(h: int, expand: float, d_state: int, d_conv: int) -> int:
    d_inner = int(expand * h)
    dt_rank = math.ceil(h / 16)
    return (
        h * 2 * d_inner  # in_proj.weight [2*d_inner, H], no bias
        + d_inner * 1 * d_conv + d_inner  # conv1d.weight [d_inner, 1, d_conv] (depthwise) + bias
        + d_inner * (dt_rank + 2 * d_state)  # x_proj.weight [dt_rank + 2N, d_inner], no bias
        + dt_rank * d_inner + d_inner  # dt_proj.weight [d_inner, dt_rank] + bias
        + d_inner * d_state  # A_log [d_inner, N]
        + d_inner  # D [d_inner]
        + d_inner * h  # out_proj.weight [H, d_inner], no bias
    )  # fmt: skip


def bimamba_resampler(d_in, latent, h, depth, expand, d_state, d_conv, use_ln) -> int:
    norm = layer_norm(h) if use_ln else 0
    block = norm + 2 * mamba_mixer(h, expand, d_state, d_conv)  # forward and backward mixers, own weights
    return linear(d_in, h) + depth * block + norm + linear(h, latent)  # input_proj, blocks, final_norm, output_proj


def token_mlp(d_in: int, d_out: int, depth: int, hidden: int) -> int:
    widths = [d_in] + [hidden] * (depth - 1) + [d_out]
    return sum(linear(widths[i], widths[i + 1]) for i in range(depth))


def lora_count(r: int, targets: list[str], whole: tuple[str, ...] = ("q_norm", "k_norm")) -> int:
    """r * (in + out) for each targeted Linear of the tiny Qwen3 (A: [r, in], B: [out, r]), plus
    the modules trained whole (`modules_to_save`: the per-head RMSNorm gains, head_dim each)."""
    shapes = {
        "q_proj": (LLM_WIDTH, Q_OUT), "k_proj": (LLM_WIDTH, KV_OUT), "v_proj": (LLM_WIDTH, KV_OUT),
        "o_proj": (Q_OUT, LLM_WIDTH), "gate_proj": (LLM_WIDTH, MLP_WIDTH), "up_proj": (LLM_WIDTH, MLP_WIDTH),
        "down_proj": (MLP_WIDTH, LLM_WIDTH),
    }  # fmt: skip
    per_layer = sum(r * sum(shapes[t]) for t in targets if t in shapes)
    per_layer += sum(HEAD_DIM for m in whole if m in ("q_norm", "k_norm"))
    head = r * (LLM_WIDTH + VOCAB) if "lm_head" in targets else 0
    return LLM_LAYERS * per_layer + head


MLP_CASES = [
    dict(latent_dimension=40, hidden_dim=48, depth=3, use_ln=True),
    dict(latent_dimension=24, hidden_dim=16, depth=1, use_ln=False),
]
BIMAMBA_CASES = [
    dict(latent_dimension=40, hidden_dim=32, depth=2, expand=1.5, d_state=8, d_conv=3, use_ln=True),
    # int(1.75 * 20) = 35 and ceil(20 / 16) = 2: truncation and rounding both matter
    dict(latent_dimension=24, hidden_dim=20, depth=1, expand=1.75, d_state=4, d_conv=4, use_ln=False),
]


def overrides_for(resampler: str, settings: dict) -> list[str]:
    values = [f"resampler.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in settings.items()]
    return [f"resampler={resampler}", *values, "stage.finetune.lora.r=4"]


@pytest.mark.parametrize("settings", MLP_CASES)
def test_mlp_counts_match_a_hand_count(settings):
    overrides = overrides_for("mlp", settings)
    r = report(*overrides)
    expected = mlp_resampler(
        VISION_WIDTH, settings["latent_dimension"], settings["hidden_dim"], settings["depth"], settings["use_ln"]
    )
    assert r["parameters"]["resampler"] == expected
    check_the_rest(r, settings["latent_dimension"], overrides)


@pytest.mark.parametrize("settings", BIMAMBA_CASES)
def test_bimamba_counts_match_a_hand_count(settings):
    overrides = overrides_for("bimamba", settings)
    r = report(*overrides)
    s = settings
    expected = bimamba_resampler(
        VISION_WIDTH,
        s["latent_dimension"],
        s["hidden_dim"],
        s["depth"],
        s["expand"],
        s["d_state"],
        s["d_conv"],
        s["use_ln"],
    )
    assert r["parameters"]["resampler"] == expected
    each = layer_norm(s["hidden_dim"]) * s["use_ln"] + 2 * mamba_mixer(
        s["hidden_dim"], s["expand"], s["d_state"], s["d_conv"]
    )
    assert r["resampler_parts"]["blocks"] == s["depth"] * each
    if s["depth"] > 1:
        assert r["resampler_repeated"]["blocks"] == [s["depth"], each]
    assert r["resampler_parts"]["input_proj"] == linear(VISION_WIDTH, s["hidden_dim"])
    check_the_rest(r, s["latent_dimension"], overrides)


def check_the_rest(r: dict, latent: int, overrides: list[str]) -> None:
    """Projector, overlap head, LoRA, totals, stages and tokens of the default tiny setup."""
    from vlm_resampler.config.preflight import compose

    p = r["parameters"]
    assert p["projector"] == token_mlp(latent, LLM_WIDTH, depth=2, hidden=LLM_WIDTH)  # conf/projector/mlp2x_gelu.yaml
    assert p["overlap_head"] == token_mlp(latent, 256, depth=2, hidden=512)  # conf/train.yaml
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
    assert p["lora"] == lora_count(4, targets)
    assert p["total"] == sum(n for m, n in p.items() if m != "total")
    cfg = compose("train", overrides)
    for name, stage in r["stages"].items():
        expected = {m: p[m] for m in cfg.stage[name].train} | ({"lora": p["lora"]} if cfg.stage[name].lora else {})
        assert stage["trainable"] == expected, name
        assert stage["frozen"] == stage["total"] - sum(expected.values())
    assert r["stages"]["vision"]["total"] == p["total"] - p["lora"]  # LoRA arrives with the finetune stage
    assert r["stages"]["finetune"]["total"] == p["total"]
    # e2p views: fov 120, overlap 0.25 -> 4 views of 112 px, 16 px patches -> 7 x 7 tokens each
    t = r["tokens"]
    assert (t["num_views"], t["view_grid"], t["vision_tokens_per_view"], t["tokens_per_view"]) == (4, [7, 7], 49, 49)


def test_the_guides_rule_of_thumb_is_far_off():
    r = report(
        "resampler=bimamba", "backbone=tiny"
    )  # the guide's balanced default: 1024 / 1.75 / 4 blocks / d_state 64 (backbone=tiny_reader has its own size)
    exact = bimamba_resampler(VISION_WIDTH, 768, 1024, 4, 1.75, 64, 4, True)
    assert r["parameters"]["resampler"] == exact == 49_592_064
    assert 1024 * 1.75 * 4 * 3 < exact / 1000  # "hidden_dim x expand x depth x 3"


def test_query_resamplers_report_their_query_tokens_and_train_every_stage():
    r = report("resampler=qformer", "resampler.num_query_tokens=16")
    assert r["tokens"]["tokens_per_view"] == 16
    assert not r["notes"] and list(r["stages"]) == ["vision", "resampler", "finetune"]
    r = report("resampler=perceiver", "resampler.num_latents=8", "stages=[resampler,finetune]")
    assert r["tokens"]["tokens_per_view"] == 8 and not r["notes"] and list(r["stages"]) == ["resampler", "finetune"]


@pytest.mark.parametrize("stitch", ["stitch=concat", "stitch=dedupe_overlap"])
def test_meta_counts_equal_those_of_the_real_model(stitch, smoke_config):
    """The meta-device build counts exactly what training builds and trains (tiny weights loaded here)."""
    from omegaconf import OmegaConf

    from vlm_resampler.inspection.counts import count, module_counts
    from vlm_resampler.runs.load import build_model
    from vlm_resampler.training.stages import apply_freeze, attach_stage_lora

    overrides = [
        "backbone=tiny",
        "resampler=bimamba",
        "resampler.hidden_dim=32",
        "resampler.depth=1",
        "resampler.d_state=4",
        "stage.vision.vision_trainable_blocks=1",
        stitch,
    ]  # backbone=tiny: what smoke_config uses
    r = report(*overrides)
    cfg = smoke_config(*overrides)
    model = build_model(OmegaConf.to_container(cfg.model, resolve=True), seed=0)
    for name in cfg.stages:
        attach_stage_lora(model, cfg.stage[name])
        rows = apply_freeze(model, cfg.stage[name])
        assert r["stages"][name]["trainable"] == dict(rows), name
        assert r["stages"][name]["total"] == count(model.parameters())
    assert "vision_blocks" in r["stages"]["vision"]["trainable"]
    assert r["parameters"] == module_counts(model)
    assert (r["tokens"]["tokens_per_view"], r["tokens"]["tokens_per_image"]) == (
        model.tokens_per_view,
        model.tokens_per_image,
    )
    assert not any(p.is_meta for p in model.parameters())


# ---- the command line ------------------------------------------------------------------------


def test_cli_prints_the_resolved_resampler_counts_and_tokens():
    done = run_cli("inspect.py", "resampler=bimamba", "resampler.hidden_dim=512")
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for text in (
        "resampler (resolved)",
        "hidden_dim",
        "512",
        "input_dim",
        "parameters",
        "lora",
        "tokens per image",
        "stage finetune",
        "meta device",
    ):
        assert text in out, text
    assert "Traceback" not in done.stderr


def test_compare_puts_configs_side_by_side_and_json_is_machine_readable(capsys):
    # backbone=tiny: the guide's resampler sizes (backbone=tiny_reader has sizes of its own, conf/resampler/size/)
    configs = [
        "backbone=tiny resampler=bimamba resampler.expand=1.75",
        "backbone=tiny resampler=bimamba resampler.expand=2.0",
        "backbone=tiny resampler=mlp",
    ]
    code, out = inspect_in_process(capsys, "--compare", *configs)
    assert code == 0
    lines = out.splitlines()
    for i, config in enumerate(configs, 1):
        assert f"[{i}] {config}" in lines
    expand = next(line for line in lines if line.split()[:1] == ["expand"])
    assert expand.split()[1:] == ["1.75", "2.0", "-"]

    code, out = inspect_in_process(capsys, "--json", "--compare", *configs)
    assert code == 0
    reports = json.loads(out)
    assert [r["source"]["label"] for r in reports] == configs
    counts = [r["parameters"]["resampler"] for r in reports]
    assert counts[0] < counts[1] and counts[2] < counts[0]
    assert counts[1] == bimamba_resampler(VISION_WIDTH, 768, 1024, 4, 2.0, 64, 4, True)
    assert counts[2] == mlp_resampler(VISION_WIDTH, 768, 1536, 2, True)


def test_overrides_may_come_before_or_after_the_options(capsys):
    """As typed after a first try: `inspect.py backbone=X --gpu-mem 80 precision=bf16`."""
    code, before = inspect_in_process(capsys, "backbone=tiny", "precision=bf16", "--gpu-mem", "80", "--json")
    assert code == 0
    code, after = inspect_in_process(capsys, "backbone=tiny", "--gpu-mem", "80", "--json", "precision=bf16")
    assert code == 0
    assert json.loads(after) == json.loads(before)
    code, fp32 = inspect_in_process(capsys, "backbone=tiny", "--gpu-mem", "80", "--json")
    assert code == 0
    # bf16 adds autocast's 16-bit copies of the weights: the override after the options took effect
    assert json.loads(after)["memory"]["finetune"]["weights"] > json.loads(fp32)["memory"]["finetune"]["weights"]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["resampler.hiden_dim=512"], ["resampler.hiden_dim", "Did you mean 'hidden_dim'"]),
        (["resampler=mlpp"], ["resampler=mlpp", "Did you mean 'mlp'"]),
        (["resampler=bimamba", "resampler.expand=-1"], ["resampler.expand=-1", "> 0"]),
        (
            ["--compare", "resampler=mlp", "resampler.expand=2"],
            ["1 of 2", "[resampler.expand=2]", "is a parameter of resampler=bimamba"],
        ),
        (["no/such/dir"], ["no/such/dir", "not an existing run or stage directory"]),
    ],
)
def test_bad_input_exits_2_with_the_checks_train_uses(args, expected, tmp_path):
    done = run_cli("inspect.py", *args, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    for text in expected:
        assert text in done.stderr, f"{text!r} not in:\n{done.stderr}"
    assert "Traceback" not in done.stderr


def write_hub_config(cache, repo: str, config: dict) -> None:
    commit = "0" * 40
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    (root / "snapshots" / commit).mkdir(parents=True)
    (root / "snapshots" / commit / "config.json").write_text(json.dumps(config))


def test_hub_backbones_need_only_their_config_in_the_local_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    other = "backbone.vision_encoder.name_or_path=google/siglip-large-patch16-384"  # not in hub_architectures.py
    done = run_cli("inspect.py", "backbone=siglip_base_qwen3_0_6b", other, cwd=tmp_path)
    assert done.returncode == 2
    assert "google/siglip-large-patch16-384" in done.stderr and "downloads nothing" in done.stderr
    assert "Traceback" not in done.stderr

    # Qwen3-0.6B's published config (and SigLIP-base's vision settings): configs only, no weights.
    write_hub_config(tmp_path / "hub", "Qwen/Qwen3-0.6B", {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 1024, "intermediate_size": 3072,
        "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
        "vocab_size": 151936, "tie_word_embeddings": True, "max_position_embeddings": 40960, "rope_theta": 1000000,
    })  # fmt: skip
    write_hub_config(tmp_path / "hub", "google/siglip-base-patch16-224", {
        "model_type": "siglip", "text_config": {"model_type": "siglip_text_model"},
        "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 768, "intermediate_size": 3072,
                          "num_hidden_layers": 12, "num_attention_heads": 12, "image_size": 224, "patch_size": 16},
    })  # fmt: skip
    done = run_cli("inspect.py", "--json", "backbone=siglip_base_qwen3_0_6b", "resampler=bimamba", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(done.stdout)
    assert r["parameters"]["llm"] == 596_049_920  # Qwen3-0.6B, tied embeddings counted once
    assert r["resampler"]["input_dim"] == 768
    assert r["parameters"]["resampler"] == bimamba_resampler(768, 768, 1024, 4, 1.75, 64, 4, True)
    assert r["tokens"]["vision_tokens_per_view"] == 14 * 14


def test_other_launch_scripts_still_get_the_standard_inspect_module():
    """launch/inspect.py must not shadow the standard library for train.py, eval.py, ... (launch/ is
    their sys.path[0] too)."""
    code = "import sys; sys.path.insert(0, 'launch'); import inspect; print(inspect.signature(len), inspect.__file__)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "launch" not in done.stdout.split()[-1]
    done = run_cli("eval.py", "checkpoint_dir=does/not/exist")
    assert done.returncode == 2 and "does not exist" in done.stderr and "Traceback" not in done.stderr


# ---- run and stage directories ---------------------------------------------------------------


@pytest.fixture
def smoke_run(cli_smoke_run):
    return cli_smoke_run[0]


def test_a_run_dir_inspects_like_its_overrides(smoke_run):
    done = run_cli(
        "inspect.py",
        "--json",
        "--compare",
        str(smoke_run),
        "debug=smoke",
        str(smoke_run / "finetune"),
        str(smoke_run / "vision"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    from_run, from_overrides, finetune, vision = json.loads(done.stdout)
    assert [r["source"]["kind"] for r in (from_run, from_overrides, finetune, vision)] == [
        "run_dir",
        "overrides",
        "stage_dir",
        "stage_dir",
    ]
    for r in (from_run, from_overrides, finetune, vision):
        r.pop("source")
    assert from_run == from_overrides

    meta = json.loads((smoke_run / "finetune" / "checkpoint_metadata.json").read_text())
    assert list(finetune["stages"]) == ["finetune"]
    assert finetune["stages"]["finetune"] == from_run["stages"]["finetune"]
    assert finetune["stages"]["finetune"]["trainable"] == meta["trainable"]  # what the trainer recorded
    assert finetune["parameters"] == from_run["parameters"] and not finetune["notes"]
    assert finetune["resampler"] == meta["resampler"]
    assert finetune["tokens"]["tokens_per_image"] == meta["derived"]["tokens_per_image"]
    assert vision["parameters"]["lora"] == 0 and vision["stages"]["vision"] == from_run["stages"]["vision"]


def test_a_directory_is_inspected_on_its_own(smoke_run):
    done = run_cli("inspect.py", str(smoke_run), "resampler.hidden_dim=8")
    assert done.returncode == 2 and "on its own" in done.stderr


def test_a_damaged_stage_dir_is_refused_naming_its_metadata(smoke_run, tmp_path):
    import shutil

    stage = tmp_path / "finetune"
    shutil.copytree(smoke_run / "finetune", stage)
    (stage / "checkpoint_metadata.json").write_text("{not json")
    done = run_cli("inspect.py", str(stage), cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{stage / 'checkpoint_metadata.json'} is not valid JSON" in done.stderr
    assert "Traceback" not in done.stderr
