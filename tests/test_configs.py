"""Every config option composes and validates; every resampler builds and keeps its promises."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from vlm_resampler.catalog import CONF_DIR
from vlm_resampler.config.preflight import config_groups
from vlm_resampler.config.validate import validate_train_config
from vlm_resampler.errors import ConfigError

GROUPS = config_groups()
# What the four first types are known to do; a type added later is checked by the generic rules below.
KEEPS_TOKEN_GRID = {"mlp": True, "bimamba": True, "perceiver": False, "qformer": False}
# Small widths for every resampler setting that has one, so each forward pass is quick.
SMALL_RESAMPLER = {
    "latent_dimension": 32,
    "hidden_dim": 32,
    "d_state": 4,
    "depth": 2,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "heads": 2,
    "dim_head": 8,
}


@pytest.mark.parametrize("resampler", GROUPS["resampler"])
def test_every_resampler_option_composes_validates_and_runs(resampler, smoke_config):
    cfg = smoke_config(f"resampler={resampler}", "stages=[vision,resampler,finetune]")  # every type, every stage
    validate_train_config(cfg)
    # Small widths so the forward pass is quick; the class is the one the option names.
    small = {key: value for key, value in SMALL_RESAMPLER.items() if key in cfg.model.resampler}
    module = instantiate(cfg.model.resampler, **small)(input_dim=16)
    out = module(torch.randn(3, 49, 16))
    assert out.shape == (3, module.output_tokens(49), 32)
    if module.keeps_token_grid:  # output token i sits where input token i was: one output per input
        assert module.output_tokens(49) == 49
    if resampler in KEEPS_TOKEN_GRID:
        assert module.keeps_token_grid == KEEPS_TOKEN_GRID[resampler]
    # Any number of tokens: the overlap loss of a query resampler feeds it the shared strip of a view.
    assert module(torch.randn(3, 5, 16)).shape == (3, module.output_tokens(5), 32)


# Stage options are always all composed (at stage.<name>); eval_debug belongs to eval.yaml.
@pytest.mark.parametrize(
    "group", [g for g in GROUPS if g not in ("resampler", "resampler/size", "eval_debug", "stage", "backbone")]
)
def test_every_option_of_every_group_composes_and_validates(group, smoke_config, tmp_path):
    (tmp_path / "train.csv").write_text("url,query,annotation\n")
    # Options that need more than their own defaults to be a valid training config.
    needs = {
        ("view", "resize"): ["stages=[resampler,finetune]"],  # one global view: no overlap for the vision stage
        ("data", "quic360"): [f"data.root={tmp_path}"],  # real data lives wherever the user keeps it
    }
    for option in GROUPS[group]:
        cfg = smoke_config(f"{group}={option}", *needs.get((group, option), []))
        validate_train_config(cfg)


@pytest.mark.parametrize("option", GROUPS["resampler/size"])
def test_a_resampler_size_applies_to_its_backbone_and_resampler_only(option, smoke_config):
    # Chosen by `${backbone}_${resampler}` in train.yaml's defaults: a misspelt file would never apply.
    backbone, resampler = option.rsplit("_", 1)
    assert backbone in GROUPS["backbone"] and resampler in GROUPS["resampler"]
    sizes = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "resampler" / "size" / f"{option}.yaml"))
    cfg = smoke_config(f"backbone={backbone}", f"resampler={resampler}")
    validate_train_config(cfg)
    assert {key: cfg.resampler[key] for key in sizes} == sizes
    # The command line still wins over the size file, and another backbone keeps the guide's sizes.
    key, value = next(iter(sizes.items()))
    assert (
        smoke_config(f"backbone={backbone}", f"resampler={resampler}", f"resampler.{key}={value + 1}").resampler[key]
        == value + 1
    )
    other = next(b for b in GROUPS["backbone"] if f"{b}_{resampler}" not in GROUPS["resampler/size"])
    assert OmegaConf.to_container(smoke_config(f"backbone={other}", f"resampler={resampler}").resampler) != (
        OmegaConf.to_container(cfg.resampler)
    )


def test_quic360_without_its_files_is_refused_at_compose_time(smoke_config, tmp_path):
    with pytest.raises(ConfigError, match="data.root"):
        validate_train_config(smoke_config("data=quic360"))
    with pytest.raises(ConfigError, match="data.splits.train"):
        validate_train_config(smoke_config("data=quic360", f"data.root={tmp_path}"))


HUB_BACKBONES = ["siglip_base_qwen3_0_6b", "siglip2_so400m_qwen3_1_7b"]


@pytest.mark.parametrize("option", GROUPS["backbone"])
def test_every_backbone_option_composes_and_is_checked_before_loading(option, smoke_config):
    cfg = smoke_config(f"backbone={option}")
    assert cfg.model.vision_encoder.name_or_path and cfg.model.language_model.name_or_path
    assert cfg.model.views.size == cfg.backbone.image_size
    if option in HUB_BACKBONES:
        # No hub here: validation must stop, naming the model and the offline default.
        with pytest.raises(ConfigError, match="backbone=tiny"):
            validate_train_config(cfg)
    elif option == "tiny":
        validate_train_config(cfg)
    # smollm2 converts a 135M-parameter GGUF on first use: validated by the slow test.


def test_stage_overrides_reach_one_stage_only(smoke_config):
    cfg = smoke_config("stage.finetune.lr=1e-4")
    assert cfg.stage.finetune.lr == 1e-4
    assert cfg.stage.resampler.lr != 1e-4


def test_experiment_preset_sets_the_guide_template(smoke_config):
    cfg = smoke_config("experiment=bimamba_custom")
    assert cfg.model.resampler._target_.endswith("BiMambaResampler")
    assert cfg.model.resampler.expand == 1.75 and cfg.model.resampler.hidden_dim == 1024
    assert cfg.experiment.name == "bimamba_custom"


def test_resampler_input_width_is_never_in_the_config(smoke_config):
    cfg = smoke_config()
    assert "input_dim" not in cfg.model.resampler


def _just_outside(declared) -> object:
    """A value its Range refuses, next to what it accepts."""
    if declared.kind is bool:
        return 1  # an int is not a switch
    if declared.kind is str:
        return "none-of-these"
    if declared.ge is not None:
        return declared.ge - 1 if declared.kind is int else declared.ge - 0.5
    if declared.gt is not None:
        return declared.gt
    return declared.le + 1 if declared.le is not None else declared.lt


@pytest.mark.parametrize("resampler", GROUPS["resampler"])
def test_every_resampler_parameter_declares_its_range_and_a_value_outside_is_refused_by_name(resampler, smoke_config):
    import inspect

    from vlm_resampler.ranges import declared_ranges

    cfg = smoke_config(f"resampler={resampler}")
    factory = instantiate(cfg.model.resampler)
    cls = factory.func
    own = set(inspect.signature(cls).parameters) - {"input_dim", "latent_dimension"}  # the base declares these
    ranges = declared_ranges(cls.__init__.__wrapped__)
    assert own <= set(ranges), f"{cls.__name__}: no Range declared for {sorted(own - set(ranges))}"
    for key, declared in ranges.items():
        bad = _just_outside(declared)
        assert not declared.accepts(bad)
        with pytest.raises(ValueError) as refused:
            factory(**{key: bad}, input_dim=16)
        assert str(refused.value) == f"resampler.{key}={bad!r}: expected {declared.expected}"


# The model parts a config group (or train.yaml) sets, each with the key its settings are written under.
PART_NODES = [
    *[("views", "view", f"view={option}") for option in GROUPS["view"]],
    *[("stitch", "stitch", f"stitch={option}") for option in GROUPS["stitch"]],
    *[("projector", "projector", f"projector={option}") for option in GROUPS["projector"]],
    ("overlap_head", "model.overlap_head", "stitch=concat"),
]


@pytest.mark.parametrize(("node_key", "shown", "choice"), PART_NODES)
def test_every_view_stitch_and_head_setting_declares_its_range_and_a_value_outside_is_refused_by_name(
    node_key, shown, choice, smoke_config
):
    """As for resamplers: each scalar a part's config sets is declared (ranges.Range) on its
    constructor, and the config checks refuse a value outside it under the key a user writes."""
    from omegaconf import open_dict

    from vlm_resampler.config.validate import check_model, import_target
    from vlm_resampler.ranges import declared_ranges

    cfg = smoke_config(choice)
    node = cfg.model[node_key]
    cls = import_target(node._target_, shown)
    ranges = declared_ranges(cls.__init__)
    scalars = {k for k, v in node.items() if not k.startswith("_") and not OmegaConf.is_list(v)}
    assert scalars <= set(ranges), f"{cls.__name__}: no Range declared for {sorted(scalars - set(ranges))}"
    for key in sorted(scalars):
        bad = _just_outside(ranges[key])
        broken = smoke_config(choice)
        with open_dict(broken):
            broken.model[node_key][key] = bad  # as a command-line override lands
        with pytest.raises(ConfigError) as refused:
            check_model(broken)
        assert str(refused.value) == f"{shown}.{key}={bad!r}: expected {ranges[key].expected}"


def test_a_key_of_another_resampler_type_set_by_a_preset_is_refused_as_such(smoke_config):
    """Set in a yaml (not on the command line, whose names preflight checks first): the model's
    checks still tell which resampler types take the key, as a typed UnknownResamplerKey."""
    from omegaconf import open_dict

    from vlm_resampler.config.validate import check_model
    from vlm_resampler.errors import UnknownResamplerKey

    cfg = smoke_config("resampler=mlp")
    with open_dict(cfg):
        cfg.resampler.d_state = 16  # where a preset's `resampler:` section lands
    with pytest.raises(UnknownResamplerKey) as refused:
        check_model(cfg)
    assert "resampler.d_state" in str(refused.value) and "bimamba" in str(refused.value)
