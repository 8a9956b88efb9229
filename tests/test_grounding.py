"""The pieces that make the offline default read the image: object facts per view, object codes,
the code-reading LLM's build, the object-code target of a stage, cached tower features, threads."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest
import torch

from vlm_resampler.data.object_facts import NOTHING, ROLES, view_directions, view_facts
from vlm_resampler.data.synthpano.objects import SceneObject
from vlm_resampler.data.synthpano.scene import pretext_scene, sample_scene, scene_rng
from vlm_resampler.models.object_codes import ObjectCodes, has_object_codes

YAWS = [0.0, 90.0, 180.0, -90.0]


def obj(direction, yaw, pitch=0.0, colour="red", shape="circle", size="small"):
    return SceneObject(shape=shape, colour=colour, direction=direction, yaw=yaw, pitch=pitch, size=size)


def test_a_horizon_object_belongs_to_the_view_nearest_its_yaw_and_poles_to_every_view():
    objects = [
        obj("right", 100.0, colour="blue", shape="square", size="large"),
        obj("above", -30.0, 70.0, colour="green"),
    ]
    table = view_facts(objects, YAWS)
    horizon, above, below = (ROLES.index(r) for r in ("horizon", "above", "below"))
    assert table[1, horizon].tolist() == [1, 2, 1]  # large, blue, square
    for v in (0, 2, 3):
        assert table[v, horizon].tolist() == [NOTHING] * 3
    assert all(table[v, above].tolist() == [0, 1, 0] for v in range(4))  # small green circle
    assert (table[:, below] == NOTHING).all()
    # A yaw near the seam goes to the view whose yaw is nearest across it.
    assert view_facts([obj("behind", -175.0)], YAWS)[2, horizon, 0] == 0


def test_view_directions_name_the_nearest_horizon_direction():
    assert view_directions(YAWS) == [0, 1, 2, 3]
    assert view_directions([10.0, 170.0, 260.0]) == [0, 2, 3]


def test_pretext_scenes_are_never_dataset_scenes():
    pretext = {pretext_scene(0, i).captions for i in range(30)}
    train = {sample_scene(scene_rng(0, "train", i)).captions for i in range(30)}
    assert pretext.isdisjoint(train)
    assert pretext_scene(0, 3) == pretext_scene(0, 3)


def test_object_codes_sum_role_tables_and_lay_out_any_number_of_tokens_per_view(tmp_path):
    torch.manual_seed(0)
    codes = ObjectCodes(16)
    facts = view_facts([obj("front", 0.0, colour="white", shape="triangle")], YAWS)[None]
    directions = torch.tensor(view_directions(YAWS))
    per_view = codes.view_codes(facts, directions)
    expected_front = (
        codes.direction[0]
        + codes.roles["horizon_size"][0]
        + codes.roles["horizon_colour"][5]
        + codes.roles["horizon_shape"][2]
        + codes.nothing[1]
        + codes.nothing[2]
    )
    torch.testing.assert_close(per_view[0, 0], expected_front)
    torch.testing.assert_close(per_view[0, 1], codes.direction[1] + codes.nothing.sum(0))
    for t in (1, 4, 49):
        seq = codes.sequence(per_view, t)
        assert seq.shape == (1, 4 * t + 3, 16)
        assert torch.equal(seq[0, t], codes.separator) and torch.equal(seq[0, 2 * t + 1], codes.separator)
        assert torch.equal(seq[0, t + 1], per_view[0, 1]) and torch.equal(seq[0, 2 * t], per_view[0, 1])
    assert codes.sequence(per_view, 4, separators=False).shape == (1, 16, 16)

    codes.save(tmp_path)
    assert has_object_codes(tmp_path)
    again = ObjectCodes.load(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(codes.state_dict().values(), again.state_dict().values()))


def test_object_codes_refuse_a_directory_without_them_or_made_for_another_vocabulary(tmp_path):
    with pytest.raises(FileNotFoundError, match="not pretrained to read object codes"):
        ObjectCodes.load(tmp_path)
    ObjectCodes(8).save(tmp_path)
    info = json.loads((tmp_path / "object_codes.json").read_text())
    info["roles"] = ["horizon"]
    (tmp_path / "object_codes.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="roles"):
        ObjectCodes.load(tmp_path)


@pytest.fixture
def mini_reader(tmp_path, monkeypatch):
    """backbone=tiny_reader built with a few-step recipe into a private cache."""
    from vlm_resampler.models import code_reader

    monkeypatch.setenv("VLM_RESAMPLER_CACHE", str(tmp_path / "cache"))
    recipe = dict(code_reader.RECIPE, steps=4, scenes=24, held_out_scenes=3, batch_size=4)
    monkeypatch.setattr(code_reader, "RECIPE", recipe)
    return recipe


def test_the_reader_builds_into_a_hub_style_directory_with_its_record(mini_reader):
    from vlm_resampler.models.backbones import load_language_model
    from vlm_resampler.models.local_backbones import ensure_local_backbone

    directory = ensure_local_backbone("vlm-resampler/tiny-qwen3-reader")
    record = json.loads((directory / "pretraining.json").read_text())
    assert record["recipe"]["steps"] == 4 and len(record["training"]["loss_every_100_steps"]) == 1
    assert record["cpu_capability"] == pinned_capability() and record["cpu"] and record["threads"] == 2
    assert {c["tokens_per_view"] for c in record["ceiling_with_perfect_codes"]} == {4, 49}
    assert set(record["ceiling_with_perfect_codes"][0]["qa_exact_match"]) == {
        "colour",
        "count",
        "direction",
        "pole",
        "size",
    }
    lm = load_language_model("vlm-resampler/tiny-qwen3-reader")
    codes = ObjectCodes.load(directory)
    assert codes.width == lm.get_input_embeddings().embedding_dim
    # Trained: the weights differ from the random tiny Qwen3 it starts from, in the rows it used.
    from vlm_resampler.models.local_backbones import tiny_qwen3_model

    start = tiny_qwen3_model().state_dict()
    changed = [k for k, v in lm.state_dict().items() if not torch.equal(v, start[k])]
    assert "model.embed_tokens.weight" in changed and any("layers.1" in k for k in changed)


def test_the_reader_build_is_deterministic(mini_reader, tmp_path):
    from vlm_resampler.models.local_backbones import _build_tiny_qwen3_reader

    first, second = tmp_path / "a", tmp_path / "b"
    for d in (first, second):
        d.mkdir()
        _build_tiny_qwen3_reader(d)
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    assert (first / "object_codes.safetensors").read_bytes() == (second / "object_codes.safetensors").read_bytes()


@pytest.fixture
def mini_tower(tmp_path, monkeypatch):
    """The default's pretrained tower built with a few-step recipe into a private cache."""
    from vlm_resampler.models import pretrained_tower

    monkeypatch.setenv("VLM_RESAMPLER_CACHE", str(tmp_path / "cache"))
    recipe = dict(pretrained_tower.RECIPE, steps=3, scenes=4, held_out_scenes=2, batch_size=4, warmup_steps=1)
    monkeypatch.setattr(pretrained_tower, "RECIPE", recipe)
    return recipe


def test_the_pretrained_tower_builds_into_a_hub_style_directory_with_its_record(mini_tower):
    from vlm_resampler.models.backbones import load_vision_encoder
    from vlm_resampler.models.local_backbones import ensure_local_backbone, tiny_siglip_model

    directory = ensure_local_backbone("vlm-resampler/tiny-siglip-pretrained")
    record = json.loads((directory / "pretraining.json").read_text())
    assert record["recipe"]["steps"] == 3 and record["training"]["views"] == 4 * 4
    # the host and float path it was built on (models/pinned_build.py)
    assert record["recipe"]["float_path"] == {"isa": "avx2", "threads": 2}
    assert record["cpu_capability"] == pinned_capability() and record["cpu"]
    assert record["threads"] == 2 and record["torch"] == torch.__version__
    assert record["float_environment"]["OMP_NUM_THREADS"] == "2"
    if platform.machine().lower() in {"x86_64", "amd64"}:  # elsewhere only the threads are pinned
        assert record["float_environment"]["MKL_CBWR"] == "AVX2"
    assert set(record["held_out"]["accuracy"]) == {"size", "colour", "shape", "nothing"}
    assert record["held_out"]["views"] == 2 * 4
    encoder = load_vision_encoder("vlm-resampler/tiny-siglip-pretrained")
    assert encoder.image_mean == (0.5, 0.5, 0.5) and encoder.hidden_size == 64
    start = tiny_siglip_model().state_dict()
    changed = [k for k, v in encoder.model.state_dict().items() if not torch.equal(v, start[k])]
    assert any("patch_embedding" in k for k in changed) and any("layers.1" in k for k in changed)


def test_a_build_made_with_another_recipe_is_built_again(mini_tower, monkeypatch, capsys):
    from vlm_resampler.models import pretrained_tower
    from vlm_resampler.models.local_backbones import ensure_local_backbone

    name = "vlm-resampler/tiny-siglip-pretrained"
    directory = ensure_local_backbone(name)
    first = (directory / "model.safetensors").read_bytes()
    assert ensure_local_backbone(name) == directory and "another recipe" not in capsys.readouterr().out
    monkeypatch.setattr(pretrained_tower, "RECIPE", dict(mini_tower, steps=4))  # an older checkout's build
    assert ensure_local_backbone(name) == directory
    out = capsys.readouterr().out
    assert (
        "was built with another recipe (differs in steps); building vlm-resampler/tiny-siglip-pretrained again" in out
    )
    assert json.loads((directory / "pretraining.json").read_text())["recipe"]["steps"] == 4
    assert (directory / "model.safetensors").read_bytes() != first
    assert ensure_local_backbone(name) == directory and "another recipe" not in capsys.readouterr().out


def test_the_pretrained_tower_build_is_deterministic(mini_tower, tmp_path):
    from vlm_resampler.models.local_backbones import _build_tiny_siglip_pretrained

    first, second = tmp_path / "a", tmp_path / "b"
    for d in (first, second):
        d.mkdir()
        _build_tiny_siglip_pretrained(d)
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()


def pinned_capability() -> str:
    """The ISA a pinned build's kernels run: AVX2 on an x86-64 CPU that has it, else the native one."""
    cpuinfo = Path("/proc/cpuinfo")
    has_avx2 = cpuinfo.is_file() and " avx2 " in f" {cpuinfo.read_text()} ".replace("\n", " ")
    if platform.machine().lower() in {"x86_64", "amd64"} and has_avx2:
        return "AVX2"
    return torch.backends.cpu.get_cpu_capability()


def test_a_pinned_build_is_the_same_whatever_float_path_its_caller_runs(mini_tower, tmp_path, monkeypatch):
    """A caller on another ISA, thread count and MKL path (another machine, as far as one machine
    can play one) builds the same bytes; the pinned thread count itself does change them."""
    from vlm_resampler.models import pinned_build
    from vlm_resampler.models.local_backbones import _build_tiny_siglip_pretrained, train_tiny_siglip_pretrained

    here, elsewhere, one_thread = tmp_path / "here", tmp_path / "elsewhere", tmp_path / "one_thread"
    for d in (here, elsewhere, one_thread):
        d.mkdir()
    _build_tiny_siglip_pretrained(here)
    with monkeypatch.context() as env:
        for key, value in {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1", "MKL_CBWR": "COMPATIBLE"}.items():
            env.setenv(key, value)
        _build_tiny_siglip_pretrained(elsewhere)
    assert (here / "model.safetensors").read_bytes() == (elsewhere / "model.safetensors").read_bytes()
    recorded = [json.loads((d / "pretraining.json").read_text()) for d in (here, elsewhere)]
    assert [(r["threads"], r["cpu_capability"]) for r in recorded] == [(2, pinned_capability())] * 2

    pinned_build.build(
        train_tiny_siglip_pretrained, one_thread, dict(mini_tower, float_path={"isa": "avx2", "threads": 1})
    )
    assert (one_thread / "model.safetensors").read_bytes() != (here / "model.safetensors").read_bytes()


def test_a_failed_pinned_build_names_what_failed_and_its_exit_status(tmp_path):
    from vlm_resampler.models import pinned_build
    from vlm_resampler.models.local_backbones import train_tiny_siglip_pretrained

    with pytest.raises(pinned_build.BackboneBuildError) as failed:
        pinned_build.build(train_tiny_siglip_pretrained, tmp_path, {"float_path": {"isa": "avx2", "threads": 1}})
    message = str(failed.value)
    assert "local_backbones:train_tiny_siglip_pretrained" in message and "exited with status 1" in message


def test_the_float_path_pins_the_isa_on_x86_only_and_refuses_an_unknown_one():
    from vlm_resampler.models.pinned_build import _resolve, pinned_environment

    x86 = pinned_environment({"isa": "avx2", "threads": 2}, machine="x86_64")
    assert x86["ATEN_CPU_CAPABILITY"] == "avx2" and x86["MKL_CBWR"] == "AVX2" and x86["OMP_NUM_THREADS"] == "2"
    assert pinned_environment({"isa": "avx2", "threads": 3}, machine="arm64") == {
        "OMP_NUM_THREADS": "3",
        "MKL_NUM_THREADS": "3",
    }
    with pytest.raises(ValueError, match=r"float_path=\{'isa': 'avx512'.*expected"):
        pinned_environment({"isa": "avx512", "threads": 2})
    with pytest.raises(ValueError, match="a module-level function of vlm_resampler"):
        _resolve("os:system")


def test_the_tower_is_taught_what_each_view_faces_and_nothing_where_it_faces_nothing():
    from vlm_resampler.models.pretrained_tower import RECIPE, render_views

    pixels, targets = render_views(RECIPE, 0, 3)
    assert pixels.shape == (12, 3, 112, 112) and targets.shape == (12, 3)
    for i in range(3):
        facts = view_facts(pretext_scene(RECIPE["scene_seed"], i).objects, YAWS)[:, ROLES.index("horizon")]
        expected = torch.where(facts == NOTHING, 0, facts + 1)
        assert torch.equal(targets[4 * i : 4 * i + 4], expected)
    assert (targets == 0).all(-1).any() and (targets > 0).all(-1).any(), "both kinds of view occur"


@pytest.mark.slow  # the real build: about 2 min on 2 cores, made once for the slow tier by conftest
def test_the_default_tower_names_held_out_views_it_was_not_trained_on():
    """The real build: the tower arrives knowing how to see."""
    from vlm_resampler.models.local_backbones import local_backbone_dir

    record = json.loads((local_backbone_dir("vlm-resampler/tiny-siglip-pretrained") / "pretraining.json").read_text())
    accuracy = record["held_out"]["accuracy"]
    assert accuracy["colour"] >= 0.95 and accuracy["size"] >= 0.95 and accuracy["nothing"] >= 0.95, accuracy
    assert accuracy["shape"] >= 0.85, accuracy  # 0.918 pinned to AVX2 (8 Dec 2026), 0.87-0.95 unpinned; chance 1/3


def test_a_stage_regresses_onto_the_readers_codes(mini_reader, mini_tower, smoke_config, tmp_path):
    """backbone=tiny_reader with both backbones built by few-step recipes into a private cache."""
    from vlm_resampler.training.run import resolved_container, run_stage

    cfg = resolved_container(
        smoke_config(
            "backbone=tiny_reader",
            "resampler=perceiver",
            "resampler.num_latents=2",
            "resampler.depth=1",
            "resampler.hidden_dim=32",
            "resampler.latent_dimension=32",
            "resampler.heads=2",
            "resampler.dim_head=16",
            "stages=[resampler]",
            "stage.resampler.object_code_weight=1.0",
            "stage.resampler.object_code_warmup_steps=1",
            "stage.resampler.max_steps=3",
        )
    )
    run_stage(cfg, "resampler", tmp_path, None)
    log = [json.loads(line) for line in (tmp_path / "resampler" / "train_log.jsonl").read_text().splitlines()]
    steps = {r["step"]: r for r in log if "loss" in r}
    assert "object_code_loss" in steps[1] and "answer_loss" not in steps[1]  # warm-up: codes alone
    assert "object_code_loss" in steps[3] and "answer_loss" in steps[3]
    assert steps[3]["loss"] == pytest.approx(steps[3]["answer_loss"] + steps[3]["object_code_loss"], rel=1e-4)
    seconds = [r["seconds"] for r in log]  # wall time since training began, on every line
    assert 0 < seconds[0] and seconds == sorted(seconds)


def test_the_learning_rate_schedule_restarts_when_the_code_warm_up_ends(tmp_path):
    from transformers import TrainingArguments

    from vlm_resampler.training.trainer import phased_schedule

    args = TrainingArguments(
        output_dir=str(tmp_path),
        learning_rate=1.0,
        warmup_steps=0.1,
        lr_scheduler_type="cosine",
        report_to=[],
        use_cpu=True,
    )
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=1.0)
    schedule = phased_schedule(optimizer, args, phase_steps=100, num_training_steps=120)
    rates = []
    for _ in range(120):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[0] == 0.0 and rates[10] == pytest.approx(1.0)  # phase 1: 10 warm-up steps, then the peak
    assert rates[99] < 0.01  # its cosine has run out
    assert rates[100] == 0.0 and rates[102] == pytest.approx(1.0)  # phase 2: 2 warm-up steps, the peak again
    assert rates[119] < 0.01 and rates[110] == pytest.approx(0.5, abs=0.1)


def test_the_code_target_is_off_with_a_reason_where_it_cannot_apply(smoke_config, tmp_path, capsys):
    from vlm_resampler.training.run import resolved_container, run_stage

    cfg = resolved_container(smoke_config("stages=[resampler]", "stage.resampler.object_code_weight=1.0"))
    run_stage(cfg, "resampler", tmp_path, None)
    assert "object-code target off" in capsys.readouterr().out
    log = (tmp_path / "resampler" / "train_log.jsonl").read_text()
    assert "object_code_loss" not in log


def test_code_target_matches_the_visual_tokens_and_the_loss_is_zero_on_them(smoke_config):
    from vlm_resampler.runs.load import build_model
    from vlm_resampler.training.losses import object_code_loss
    from vlm_resampler.training.run import resolved_container
    from vlm_resampler.training.trainer import CodeTarget

    cfg = resolved_container(
        smoke_config(
            "resampler=perceiver",
            "resampler.num_latents=3",
            "resampler.depth=1",
            "resampler.hidden_dim=32",
            "resampler.latent_dimension=32",
        )
    )
    model = build_model(cfg["model"], seed=0)
    codes = ObjectCodes(model.llm.get_input_embeddings().embedding_dim)
    target = CodeTarget(model, codes)
    facts = torch.stack([view_facts([obj("left", -80.0)], [m.yaw_deg for m in model.views.metadata()])] * 2)
    wanted = target(facts)
    assert wanted.shape == model.visual_embeddings(torch.rand(2, 3, 64, 128)).shape
    assert float(object_code_loss(wanted, wanted)) == pytest.approx(0.0, abs=1e-6)
    assert float(object_code_loss(wanted.flip(0) * 0 + 1, wanted)) > 0.1


def mapped_file(tensor: torch.Tensor) -> Path | None:
    """The file this process has mapped where `tensor`'s memory lies (/proc/self/maps), or None."""
    address = tensor.untyped_storage().data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if start <= address < end:
            return Path(fields[5]) if len(fields) == 6 and fields[5].startswith("/") else None
    return None


def test_cached_features_equal_the_towers_and_are_reused_until_the_tower_changes(smoke_config, tmp_path, monkeypatch):
    from vlm_resampler.data.datasets import load_panorama, prepare_split
    from vlm_resampler.runs.load import build_model
    from vlm_resampler.training import feature_cache
    from vlm_resampler.training.feature_cache import cached_features, tower_fingerprint
    from vlm_resampler.training.run import resolved_container

    cfg = resolved_container(smoke_config())
    model = build_model(cfg["model"], seed=0).eval()
    images = sorted({str(i["image"]) for i in prepare_split(smoke_config().data, "train")})[:5]
    monkeypatch.setenv("VLM_RESAMPLER_CACHE", str(tmp_path))
    monkeypatch.setattr(feature_cache, "BATCH", 2)  # three batches, the last one short
    first = cached_features(model, tower_fingerprint(model.vision), images, 128, 64)
    assert first.source.startswith("computed")
    with torch.no_grad():
        direct = model.view_features(torch.stack([load_panorama(p, 128, 64) for p in images]))
    for k, image in enumerate(images):
        torch.testing.assert_close(first[image], direct[k])
    # Served from the saved file (mapped: one copy in the page cache for every process of a node),
    # not from the tensor the pass computed (each process's own memory).
    saved = next((tmp_path / "features").glob("*.safetensors"))
    assert mapped_file(first.features) == saved.resolve()
    again = cached_features(model, tower_fingerprint(model.vision), images, 128, 64)
    assert again.source.startswith("reused") and torch.equal(again.features, first.features)
    assert mapped_file(again.features) == saved.resolve()
    with torch.no_grad():
        model.vision.blocks[-1].mlp.fc1.bias.add_(1.0)  # a stage trained a block
    changed = cached_features(model, tower_fingerprint(model.vision), images, 128, 64)
    assert changed.source.startswith("computed") and not torch.equal(changed.features, first.features)


def test_threads_follow_the_cpus_a_job_was_given(monkeypatch):
    from vlm_resampler.training.distributed import allotted_threads

    for var in ("SLURM_CPUS_PER_TASK", "OMP_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    assert allotted_threads(None) == (None, "torch's default")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert allotted_threads(None) == (1, "OMP_NUM_THREADS")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert allotted_threads(None) == (3, "SLURM_CPUS_PER_TASK")
    assert allotted_threads(2) == (2, "num_threads")


def test_the_declared_architectures_are_those_of_the_builds(mini_reader, mini_tower):
    """Checks and inspect read the two pretrained builds' architectures without building them
    (local_backbones.DECLARED_ARCHITECTURES): each must be its build's config.json."""
    from transformers import AutoConfig

    from vlm_resampler.models.local_backbones import DECLARED_ARCHITECTURES, ensure_local_backbone

    written_by_saving = {"architectures", "transformers_version", "dtype", "torch_dtype", "_name_or_path"}
    for name, declared in DECLARED_ARCHITECTURES.items():
        built = AutoConfig.from_pretrained(ensure_local_backbone(name)).to_dict()
        expected = declared().to_dict()
        for config in (built, expected):
            for key in written_by_saving:
                config.pop(key, None)
        assert built == expected, name
