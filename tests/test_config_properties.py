"""Property-based tests (hypothesis) of the config validator: what is valid always passes, a
one-character typo of a key is always refused naming that key, an out-of-range stage value is
always refused naming its key."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from vlm_resampler.catalog import resampler_options
from vlm_resampler.config.preflight import check_key_exists, compose
from vlm_resampler.config.validate import check_resampler_builds, check_stage_values, walk_targets
from vlm_resampler.errors import ConfigError
from vlm_resampler.suggest import one_edit_apart

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
DIMS = st.integers(min_value=1, max_value=64)
DROPOUT = st.floats(min_value=0.0, max_value=0.99, allow_nan=False)


@pytest.fixture(scope="module")
def base():
    return {name: compose("train", [f"resampler={name}"]) for name in resampler_options()}


def validate_resampler(cfg, values: dict) -> None:
    cfg = cfg.copy()
    for key, value in values.items():
        cfg.resampler[key] = value
    walk_targets(cfg.model, "model")
    check_resampler_builds(cfg)  # the resampler's own range checks, on the meta device


VALID = {
    "mlp": st.fixed_dictionaries(
        {
            "latent_dimension": DIMS,
            "hidden_dim": DIMS,
            "depth": st.integers(1, 4),
            "use_ln": st.booleans(),
            "dropout": DROPOUT,
        }
    ),
    "bimamba": st.fixed_dictionaries(
        {
            "latent_dimension": DIMS,
            "hidden_dim": DIMS,
            "depth": st.integers(1, 3),
            "expand": st.floats(1.0, 3.0),
            "d_state": st.integers(1, 32),
            "d_conv": st.integers(1, 4),
            "use_ln": st.booleans(),
            "dropout": DROPOUT,
            "norm_first": st.booleans(),
        }
    ),
    "perceiver": st.fixed_dictionaries(
        {
            "latent_dimension": DIMS,
            "num_latents": st.integers(1, 16),
            "depth": st.integers(1, 3),
            "heads": st.integers(1, 4),
            "hidden_dim": DIMS,
            "dim_head": st.integers(1, 16),
            "ff_mult": st.integers(1, 4),
            "dropout": DROPOUT,
        }
    ),
    "qformer": st.integers(1, 4).flatmap(
        lambda heads: st.fixed_dictionaries(
            {
                "latent_dimension": DIMS,
                "num_query_tokens": st.integers(1, 16),
                "num_hidden_layers": st.integers(1, 3),
                "num_attention_heads": st.just(heads),
                "hidden_dim": st.integers(1, 16).map(lambda k: k * heads),
                "intermediate_size": DIMS,
                "cross_attention_frequency": st.integers(1, 2),
                "dropout": DROPOUT,
            }
        )
    ),
}


@pytest.mark.parametrize("resampler", sorted(VALID))
def test_random_valid_resampler_settings_always_validate(resampler, base):
    @SETTINGS
    @given(values=VALID[resampler])
    def check(values):
        validate_resampler(base[resampler], values)

    check()


def typos(word: str):
    """Every single-character slip: deletion, insertion, replacement, swap of neighbours."""
    letters = string.ascii_lowercase + "_"
    i = st.integers(0, len(word) - 1)
    return st.one_of(
        i.map(lambda k: word[:k] + word[k + 1 :]),
        st.tuples(st.integers(0, len(word)), st.sampled_from(letters)).map(
            lambda t: word[: t[0]] + t[1] + word[t[0] :]
        ),
        st.tuples(i, st.sampled_from(letters)).map(lambda t: word[: t[0]] + t[1] + word[t[0] + 1 :]),
        st.integers(0, max(len(word) - 2, 0)).map(
            lambda k: word[:k] + word[k + 1 : k + 2] + word[k : k + 1] + word[k + 2 :]
        ),
    )


def keys_of(node) -> list[str]:
    return [str(k) for k in node.keys() if not str(k).startswith("_")]


@pytest.mark.parametrize("where", ["stage.finetune", "resampler", "model.overlap_head", "view", ""])
def test_a_one_character_typo_of_a_key_is_refused_naming_that_key(where, base):
    cfg = base["mlp"]
    node = OmegaConf.select(cfg, where) if where else cfg
    valid = keys_of(node)

    @SETTINGS
    @given(data=st.data())
    def check(data):
        key = data.draw(st.sampled_from(valid))
        typo = data.draw(typos(key))
        assume(typo and typo not in valid and "." not in typo)
        full = f"{where}.{typo}" if where else typo
        with pytest.raises(ConfigError) as err:
            check_key_exists(cfg, full)
        message = str(err.value)
        assert full.split(".")[-1] in message
        first_line = message.splitlines()[0]
        # The slipped key is named, after nothing but keys as near ('stagea' is one slip from
        # both 'stages' and 'stage').
        assert repr(key) in first_line, message
        suggested = re.findall(r"'([^']+)'", first_line.split("Did you mean", 1)[1])
        assert all(one_edit_apart(typo, s) for s in suggested[: suggested.index(key)]), message

    check()


OUT_OF_RANGE = {
    "lr": st.one_of(st.floats(max_value=0.0, allow_nan=False), st.text(max_size=5), st.booleans()),
    "weight_decay": st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False),
    "warmup_ratio": st.one_of(st.floats(min_value=1.0, allow_nan=False), st.floats(max_value=-1e-9, allow_nan=False)),
    "batch_size": st.one_of(st.integers(max_value=0), st.floats(allow_nan=False), st.booleans()),
    "grad_accum": st.one_of(st.integers(max_value=0), st.text(min_size=1, max_size=5)),
    "max_steps": st.one_of(st.integers(max_value=-2), st.just(0)),
    "logging_steps": st.integers(max_value=0),
    "save_steps": st.integers(max_value=0),
    "vision_trainable_blocks": st.integers(max_value=-2),
    "max_grad_norm": st.floats(max_value=0.0, allow_nan=False),
    "epochs": st.floats(max_value=0.0, allow_nan=False),
}


@pytest.mark.parametrize("key", sorted(OUT_OF_RANGE))
def test_an_out_of_range_stage_value_is_refused_naming_the_key(key, base):
    stage = base["mlp"].stage.finetune

    @SETTINGS
    @given(value=OUT_OF_RANGE[key])
    def check(value):
        node = stage.copy()
        node[key] = value
        with pytest.raises(ConfigError) as err:
            check_stage_values("finetune", node)
        assert str(err.value).startswith(f"stage.finetune.{key}="), str(err.value)
        assert "expected" in str(err.value)

    check()
