"""launch/import_config.py: the guide's YAML format -> conf/experiment/<name>.yaml, every key
mapped or refused by name, checked as train.py checks a config, never overwriting by accident."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from vlm_resampler.config.legacy import convert
from vlm_resampler.config.legacy_fields import override_value, yaml_value
from vlm_resampler.config.preflight import compose
from vlm_resampler.errors import ConfigError

from conftest import REPO_ROOT, run_cli

DATA = Path(__file__).parent / "data"
EXPERIMENTS = REPO_ROOT / "conf" / "experiment"


@pytest.fixture
def preset_name():
    """A preset name no one else uses; the preset is removed afterwards (conf/ is shared)."""
    name = f"test_import_{uuid.uuid4().hex[:8]}"
    yield name
    (EXPERIMENTS / f"{name}.yaml").unlink(missing_ok=True)


def old_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "old.yaml"
    path.write_text(text)
    return path


def test_the_guides_quick_start_becomes_a_preset_that_composes(preset_name):
    done = run_cli("import_config.py", str(DATA / "guide_quickstart.yaml"), "--name", preset_name)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "models.resampler_type" in out and "resampler=bimamba" in out
    assert "models.resampler_config.expand" in out and "resampler.expand: 1.75" in out
    assert "resampler.norm_first: true  (the default of conf/resampler/bimamba.yaml)" in out
    assert f"train.py experiment={preset_name}" in out

    text = (EXPERIMENTS / f"{preset_name}.yaml").read_text()
    assert text.startswith("# @package _global_\n") and "- override /resampler: bimamba" in text
    cfg = compose("train", [f"experiment={preset_name}"])
    assert cfg.experiment.name == "my_experiment"  # names the run directory, as in the old file
    assert cfg.model.resampler._target_.endswith("BiMambaResampler")
    expected = dict(
        latent_dimension=768,
        hidden_dim=1024,
        depth=4,
        expand=1.75,
        d_state=64,
        d_conv=4,
        use_ln=True,
        dropout=0.05,
        norm_first=True,
    )
    assert {k: cfg.model.resampler[k] for k in expected} == expected


def test_simple_fields_take_the_defaults_of_the_resampler_option(preset_name):
    done = run_cli("import_config.py", str(DATA / "guide_simple_fields.yaml"), "--name", preset_name)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "models.latent_dimension" in done.stdout and "resampler.latent_dimension: 512" in done.stdout
    assert "models.resampler_hidden_dim" in done.stdout and "resampler.hidden_dim: 1024" in done.stdout
    cfg = compose("train", [f"experiment={preset_name}"])
    defaults = OmegaConf.load(REPO_ROOT / "conf" / "resampler" / "mlp.yaml")
    assert cfg.model.resampler.latent_dimension == 512 and cfg.model.resampler.hidden_dim == 1024
    assert cfg.model.resampler.depth == defaults.depth and cfg.model.resampler.use_ln == defaults.use_ln
    # every value is written out, so a later change of conf/resampler/mlp.yaml does not change it
    assert (
        f"depth: {defaults.depth}  # not in guide_simple_fields.yaml"
        in (EXPERIMENTS / f"{preset_name}.yaml").read_text()
    )


def test_stage_lora_and_view_settings_arrive_in_the_composed_config(preset_name):
    done = run_cli("import_config.py", str(DATA / "guide_stages.yaml"), "--name", preset_name)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "training.stage_configs.resampler.accumulate_grad_batches -> stage.resampler.grad_accum: 2" in " ".join(
        done.stdout.split()
    )
    cfg = compose("train", [f"experiment={preset_name}"])
    assert cfg.model.resampler._target_.endswith("BiMambaResampler")  # bidirectional_mamba is the original's alias
    assert (cfg.resampler.hidden_dim, cfg.resampler.latent_dimension, cfg.resampler.expand) == (256, 128, 2.0)
    assert list(cfg.stages) == ["vision", "resampler", "finetune"]
    vision, resampler, finetune = cfg.stage.vision, cfg.stage.resampler, cfg.stage.finetune
    assert (vision.epochs, vision.max_steps, vision.lr, vision.batch_size) == (3, -1, 5e-4, 8)
    assert vision.vision_trainable_blocks == 1 and vision.vicreg.variance == 20.0 and vision.vicreg.invariance == 25.0
    assert (resampler.lr, resampler.grad_accum) == (1e-4, 2)  # `1e-4` is a number, as in every config here
    assert (finetune.lr, finetune.batch_size, finetune.grad_accum) == (5e-5, 1, 4)
    # The guide names no modules_to_save: conf/stage/finetune.yaml's stays (the q/k norm gains).
    assert dict(finetune.lora) == {
        "r": 8,
        "alpha": 16,
        "dropout": 0.1,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "modules_to_save": ["q_norm", "k_norm"],
    }
    assert (cfg.view.fov_deg, cfg.view.overlap) == (90, 0.5)
    assert cfg.model.vision_encoder.name_or_path == "vlm-resampler/tiny-siglip"
    text = (EXPERIMENTS / f"{preset_name}.yaml").read_text()
    assert "# Stage, LoRA and view settings in the original format" in text


def test_an_existing_preset_is_replaced_only_with_force(preset_name):
    path = EXPERIMENTS / f"{preset_name}.yaml"
    path.write_text("# @package _global_\nexperiment:\n  name: mine\n")
    done = run_cli("import_config.py", str(DATA / "guide_quickstart.yaml"), "--name", preset_name)
    assert done.returncode == 2 and "exists already" in done.stderr and "--force" in done.stderr
    assert path.read_text().endswith("name: mine\n")
    done = run_cli("import_config.py", str(DATA / "guide_quickstart.yaml"), "--name", preset_name, "--force")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "override /resampler: bimamba" in path.read_text()
    assert not list(EXPERIMENTS.glob(f".{preset_name}*")), "no temporary file may be left behind"


def test_an_unknown_key_is_refused_by_name_with_a_suggestion_and_nothing_is_written(tmp_path, preset_name):
    old = old_file(
        tmp_path, "models:\n  resampler_type: bimamba\n  resampler_config:\n    hidden_dim: 512\n    expnd: 2.0\n"
    )
    done = run_cli("import_config.py", str(old), "--name", preset_name)
    assert done.returncode == 2
    assert "models.resampler_config.expnd" in done.stderr and "Did you mean 'expand'" in done.stderr
    assert "Parameters of resampler=bimamba: latent_dimension, hidden_dim" in done.stderr  # what is understood
    assert "nothing was written" in done.stderr and "Traceback" not in done.stderr
    assert not (EXPERIMENTS / f"{preset_name}.yaml").exists()


def test_a_bad_value_is_refused_before_anything_is_written(tmp_path, preset_name):
    old = old_file(tmp_path, "models:\n  resampler_type: bimamba\n  resampler_config:\n    expand: -1\n")
    done = run_cli("import_config.py", str(old), "--name", preset_name)
    assert done.returncode == 2
    assert "resampler.expand=-1" in done.stderr and "> 0" in done.stderr
    assert "from models.resampler_config.expand in old.yaml" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (EXPERIMENTS / f"{preset_name}.yaml").exists()


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "environment: {wandb_project: x}\nmodels: {resampler_type: mlp}",
            ["environment: not understood", "Understood here: experiment, models"],
        ),
        (
            "models: {resampler_type: mlp, resampler_confg: {}}",
            ["models.resampler_confg", "Did you mean 'resampler_config'"],
        ),
        (
            "models: {resampler_type: mlp, resampler_config: {expand: 2.0}}",
            ["models.resampler_config.expand", "is a parameter of resampler=bimamba"],
        ),
        ("models: {resampler_type: mamba}", ["models.resampler_type='mamba'", "bimamba"]),
        ("models: {resampler_config: {hidden_dim: 512}}", ["models.resampler_type is missing"]),
        ("models: {resampler_type: mlp, language_model_name: Qwen/Qwen3-1.8B}", ["Qwen/Qwen3-1.8B", "0.6B, 1.7B"]),
        (
            "models: {resampler_type: mlp, vision_name: google/siglip-large}",
            ["models.vision_name", "no conf/backbone option"],
        ),
        (
            "models: {resampler_type: mlp}\ntraining: {stage_configs: {finetune: {lr: fast}}}",
            ["training.stage_configs.finetune.lr='fast'", "a number"],
        ),
        (
            "models: {resampler_type: mlp}\ntraining: {stage_configs: {finetune: {num_workers: 4}}}",
            ["finetune.num_workers", "accumulate_grad_batches"],
        ),
        (
            "models: {resampler_type: mlp}\ntraining: {stages: [vision, finetuning]}",
            ["'finetuning'", "Did you mean 'finetune'"],
        ),
        (
            "models: {resampler_type: mlp, overlap_ratio: 0.5}\nimage_processing: {overlap_ratio: 0.25}",
            ["both set view.overlap"],
        ),
        (
            "models: {resampler_type: mlp}\nimage_processing: {crop_strategy: anyres_max}",
            ["crop_strategy='anyres_max'", "e2p"],
        ),
        ("models: {resampler_type: mlp}\nlora: {use_lora: false, rank: 8}", ["lora.rank", "use_lora: false"]),
    ],
)
def test_what_is_not_understood_is_named(text, expected):
    with pytest.raises(ConfigError) as err:
        convert(OmegaConf.to_container(OmegaConf.create(text)), "old.yaml", "x")
    for fragment in expected:
        assert fragment in str(err.value), f"{fragment!r} not in:\n{err.value}"


def test_every_problem_is_listed_at_once():
    old = {"models": {"resampler_type": "bimamba", "resampler_config": {"expnd": 2, "hiden_dim": 3}}, "paths": {}}
    with pytest.raises(ConfigError, match="3 setting"):
        convert(old, "old.yaml", "x")


@pytest.mark.parametrize(
    "fixture, backbone, resampler",
    [
        ("guide_small.yaml", "siglip_base_qwen3_0_6b", {"hidden_dim": 512, "expand": 2.0, "depth": 3}),
        ("guide_large.yaml", "siglip2_so400m_qwen3_1_7b", {"hidden_dim": 2048, "expand": 1.5, "depth": 6}),
    ],
)
def test_the_guides_example_configs_map_to_our_backbone_options(fixture, backbone, resampler):
    # Converted without writing: their backbones need the hub, and conf/ is shared with other runs.
    preset = convert(OmegaConf.to_container(OmegaConf.load(DATA / fixture)), str(DATA / fixture))
    assert preset.groups == {"resampler": "bimamba", "backbone": backbone}
    assert {k: preset.values[f"resampler.{k}"] for k in resampler} == resampler
    assert set(preset.values) >= {
        f"resampler.{k}" for k in ("latent_dimension", "d_state", "d_conv", "use_ln", "dropout", "norm_first")
    }
    cfg = compose("train", preset.overrides())  # the same settings as command-line overrides
    assert cfg.backbone.name == backbone and cfg.model.resampler.hidden_dim == resampler["hidden_dim"]


def test_a_query_resampler_without_stages_trains_every_stage():
    preset = convert({"models": {"resampler_type": "qformer"}}, "old.yaml", "x")
    assert "stages" not in preset.values  # the vision stage works for query resamplers too
    assert list(compose("train", preset.overrides()).stages) == ["vision", "resampler", "finetune"]


@pytest.mark.parametrize(
    "value", [5e-05, 1e-4, 2.0, 0.05, -1, 3, True, None, "1e-4", "yes", "a b", "q_proj", ["q_proj", "v_proj"]]
)
def test_values_are_written_so_that_they_read_back_the_same(value):
    assert OmegaConf.create(f"k: {yaml_value(value)}").k == value
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_override(f"k={override_value(value)}").value()
    assert parsed == value
