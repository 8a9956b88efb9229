"""Rebuilding resamplers, and whole checkpoints, from their weights when the metadata is gone.

Property tests: random valid hyperparameters -> build -> state dict -> rebuild from the weights
alone (plus only those values no shape reveals that change outputs) -> identical outputs.
Checkpoint tests: a smoke run per type with its checkpoint_metadata.json deleted must still
evaluate, from the shapes and the run's resolved_config.yaml, and say where each value came from.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vlm_resampler.catalog import CONF_DIR, resampler_options
from vlm_resampler.resamplers.bimamba import BiMambaResampler, expand_for
from vlm_resampler.resamplers.infer import detect_type, infer_resampler, registered_rules
from vlm_resampler.resamplers.mlp import MLPResampler
from vlm_resampler.resamplers.perceiver import PerceiverResampler
from vlm_resampler.resamplers.qformer import QFormerResampler
from vlm_resampler.resamplers.shape_rules import ShapeInferenceError, shapes_of
from vlm_resampler.runs import layout
from vlm_resampler.runs.checkpoint import CheckpointMismatch

from conftest import FINETUNE_RUN_TYPES, run_cli, train_smoke_finetune

PROPERTY = settings(max_examples=25, deadline=None)
small = st.integers(1, 12)
dropout = st.floats(0.0, 0.5)


def rebuild_from_weights(cls, hparams: dict, tokens: int):
    """Build `cls(**hparams)`, rebuild it from its state dict alone; both outputs on one input."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        original = cls(**hparams).eval()
    state = original.state_dict()
    inferred = infer_resampler(state)
    assert inferred.type_name == original.type_name
    # Supply exactly the values that no shape reveals and that change outputs, as a user would;
    # the others get placeholders, and the identical outputs below show they do not matter.
    needed = {u.name: hparams[u.name] for u in inferred.unknown if u.affects_outputs}
    if needed:
        with pytest.raises(ShapeInferenceError, match="|".join(f"resampler.{name}=" for name in needed)):
            inferred.resolve([])
    rebuilt = inferred.resolve([("test", needed)]).build()
    rebuilt.load_state_dict(state, strict=True)
    rebuilt.eval()
    x = torch.randn(2, tokens, hparams["input_dim"], generator=torch.Generator().manual_seed(tokens))
    with torch.no_grad():
        return original(x), rebuilt(x), inferred


@PROPERTY
@given(
    input_dim=small,
    latent=small,
    hidden=st.integers(1, 24),
    depth=st.integers(1, 4),
    use_ln=st.booleans(),
    p=dropout,
    tokens=st.sampled_from([1, 3, 4, 6, 9]),
    pool=st.one_of(st.none(), st.integers(1, 3)),
)
def test_mlp_rebuilds_from_its_weights(input_dim, latent, hidden, depth, use_ln, p, tokens, pool):
    hp = dict(
        input_dim=input_dim,
        latent_dimension=latent,
        hidden_dim=hidden,
        depth=depth,
        use_ln=use_ln,
        dropout=p,
        pool=pool,
    )
    expected, found, inferred = rebuild_from_weights(MLPResampler, hp, tokens)
    assert torch.equal(expected, found)
    assert inferred.hparams["depth"] == depth and inferred.hparams["pool"] == pool
    assert found.shape[1] == (tokens if pool is None else pool * pool)
    if depth > 1:
        assert (inferred.hparams["hidden_dim"], inferred.hparams["use_ln"]) == (hidden, use_ln)


def test_a_pooled_mlp_averages_the_patch_grid_into_cells():
    mlp = MLPResampler(input_dim=2, latent_dimension=3, hidden_dim=4, depth=1, use_ln=False, dropout=0.0, pool=2)
    grid = torch.arange(16 * 2, dtype=torch.float32).reshape(1, 16, 2)  # a 4 x 4 patch grid, raster order
    quadrants = grid.reshape(1, 2, 2, 2, 2, 2).permute(0, 1, 3, 2, 4, 5).reshape(1, 4, 4, 2).mean(dim=2)
    assert torch.equal(mlp.pooled(grid), quadrants)  # cell (0, 0) averages patches 0, 1, 4, 5
    assert mlp(grid).shape == (1, 4, 3) and not mlp.keeps_token_grid
    with pytest.raises(ValueError, match=r"resampler\.pool=0: expected null"):
        MLPResampler(input_dim=2, latent_dimension=3, hidden_dim=4, depth=1, use_ln=False, dropout=0.0, pool=0)


@st.composite
def bimamba_hparams(draw):
    hidden = draw(st.integers(1, 40))
    expand = draw(st.floats(0.05, 3.0).filter(lambda e: int(e * hidden) >= 1))
    return dict(
        input_dim=draw(small),
        latent_dimension=draw(small),
        hidden_dim=hidden,
        depth=draw(st.integers(1, 3)),
        expand=expand,
        d_state=draw(st.integers(1, 6)),
        d_conv=draw(st.integers(1, 4)),
        use_ln=draw(st.booleans()),
        dropout=draw(dropout),
        norm_first=draw(st.booleans()),
    )


@PROPERTY
@given(hp=bimamba_hparams(), tokens=st.integers(1, 6))
def test_bimamba_rebuilds_from_its_weights(hp, tokens):
    expected, found, inferred = rebuild_from_weights(BiMambaResampler, hp, tokens)
    assert torch.equal(expected, found)
    h = hp["hidden_dim"]
    assert inferred.derived["d_inner"] == int(hp["expand"] * h) == int(inferred.hparams["expand"] * h)
    assert any("d_inner" in note for note in inferred.notes), "the expand caveat must be stated"
    assert {k: inferred.hparams[k] for k in ("hidden_dim", "depth", "d_state", "d_conv", "use_ln")} == {
        k: hp[k] for k in ("hidden_dim", "depth", "d_state", "d_conv", "use_ln")
    }
    # norm_first matters exactly when there is a norm to place.
    assert any(u.name == "norm_first" and u.affects_outputs == hp["use_ln"] for u in inferred.unknown)


@PROPERTY
@given(
    num_latents=st.integers(1, 6),
    depth=st.integers(1, 3),
    heads=st.integers(1, 4),
    hidden=st.integers(1, 24),
    dim_head=st.integers(1, 8),
    ff_mult=st.integers(1, 3),
    p=dropout,
    input_dim=small,
    latent=small,
    tokens=st.integers(1, 6),
)
def test_perceiver_rebuilds_from_its_weights(
    num_latents, depth, heads, hidden, dim_head, ff_mult, p, input_dim, latent, tokens
):
    hp = dict(
        input_dim=input_dim,
        latent_dimension=latent,
        num_latents=num_latents,
        depth=depth,
        heads=heads,
        hidden_dim=hidden,
        dim_head=dim_head,
        ff_mult=ff_mult,
        dropout=p,
    )
    expected, found, inferred = rebuild_from_weights(PerceiverResampler, hp, tokens)
    assert torch.equal(expected, found)
    assert inferred.derived["heads * dim_head"] == heads * dim_head
    assert {k: inferred.hparams[k] for k in ("num_latents", "depth", "hidden_dim", "ff_mult")} == {
        "num_latents": num_latents,
        "depth": depth,
        "hidden_dim": hidden,
        "ff_mult": ff_mult,
    }


@PROPERTY
@given(
    queries=st.integers(1, 6),
    layers=st.integers(1, 5),
    heads=st.integers(1, 4),
    per_head=st.integers(1, 6),
    intermediate=st.integers(1, 24),
    frequency=st.integers(1, 6),
    p=dropout,
    input_dim=small,
    latent=small,
    tokens=st.integers(1, 6),
)
def test_qformer_rebuilds_from_its_weights(
    queries, layers, heads, per_head, intermediate, frequency, p, input_dim, latent, tokens
):
    hp = dict(
        input_dim=input_dim,
        latent_dimension=latent,
        num_query_tokens=queries,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        hidden_dim=heads * per_head,
        intermediate_size=intermediate,
        cross_attention_frequency=frequency,
        dropout=p,
    )
    expected, found, inferred = rebuild_from_weights(QFormerResampler, hp, tokens)
    assert torch.equal(expected, found)
    f = inferred.hparams["cross_attention_frequency"]
    assert [i for i in range(layers) if i % f == 0] == [i for i in range(layers) if i % frequency == 0]
    assert {
        k: inferred.hparams[k] for k in ("num_query_tokens", "num_hidden_layers", "hidden_dim", "intermediate_size")
    } == {
        "num_query_tokens": queries,
        "num_hidden_layers": layers,
        "hidden_dim": heads * per_head,
        "intermediate_size": intermediate,
    }


def test_expand_reproduces_every_d_inner():
    for hidden in range(1, 400):
        for d_inner in range(1, 4 * hidden):
            expand, _ = expand_for(d_inner, hidden)
            assert int(expand * hidden) == d_inner, (d_inner, hidden)


def test_unknown_weights_are_refused_with_their_keys():
    known = ", ".join(sorted(resampler_options()))  # every type of conf/resampler/, each with its rule
    with pytest.raises(
        ShapeInferenceError,
        match=rf"no resampler type: keys conv\.bias, conv\.weight; known types: {known}$",
    ):
        detect_type(shapes_of({"conv.weight": (3, 3), "conv.bias": (3,)}))


def test_a_head_count_that_does_not_divide_is_refused():
    perceiver = PerceiverResampler(8, 8, 2, 1, 2, 8, 3, 1, 0.0)  # heads * dim_head = 6
    inferred = infer_resampler(perceiver.state_dict())
    with pytest.raises(ValueError, match=r"resampler.heads=4: expected a divisor of heads \* dim_head = 6"):
        inferred.resolve([("the command line", {"heads": 4})])
    resolved = inferred.resolve([("the command line", {"dim_head": 3})])
    assert (resolved.kwargs["heads"], resolved.kwargs["dim_head"]) == (2, 3)


# ---- every type of conf/resampler/ ------------------------------------------------------------

RESAMPLER_OPTIONS = resampler_options()


def test_the_resampler_types_are_discovered_from_conf():
    assert len(RESAMPLER_OPTIONS) >= 4 and set(RESAMPLER_OPTIONS) <= set(registered_rules())


@pytest.mark.parametrize("option", RESAMPLER_OPTIONS)
def test_every_resampler_of_conf_has_a_shape_rule_that_rebuilds_it(option):
    """A type added as its .py and .yaml fails here until its module registers a shape rule that
    reads its defaults back from the weights and rebuilds the same outputs."""
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "resampler" / f"{option}.yaml"), resolve=True)
    target = node.pop("_target_")
    node.pop("_partial_", None)
    assert option in registered_rules(), f"conf/resampler/{option}.yaml: no shape rule (`@rule({option!r}, ...)`)"
    torch.manual_seed(0)
    saved = get_class(target)(input_dim=24, **node).eval()
    inferred = infer_resampler(saved.state_dict())
    assert (inferred.type_name, inferred.target) == (option, target)
    resolved = inferred.resolve([("conf/resampler", node)])
    shaped = {k: v for k, v in node.items() if k in inferred.hparams}
    assert {k: resolved.kwargs[k] for k in shaped} == shaped, "a default the weights fix was read back otherwise"
    rebuilt = resolved.build().eval()
    rebuilt.load_state_dict(saved.state_dict())  # strict: every key and shape
    views = torch.randn(2, 16, 24)
    with torch.no_grad():
        assert torch.equal(saved(views), rebuilt(views))


# ---- checkpoints ---------------------------------------------------------------------------

# The runs of conftest.finetune_runs, one per type.
TYPES = FINETUNE_RUN_TYPES


def without_metadata(run_dir, tmp_path, keep_config=True):
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    (copy / "finetune" / layout.METADATA).unlink()
    if not keep_config:
        (copy / layout.RESOLVED_CONFIG).unlink()
    return copy / "finetune"


def same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("kind", list(TYPES))
def test_eval_without_metadata_infers_and_says_so(finetune_runs, tmp_path, kind):
    stage_dir = without_metadata(finetune_runs[kind], tmp_path)
    done = run_cli(
        "eval.py", f"checkpoint_dir={stage_dir}", "debug=smoke", "baselines=false", "meteor=false", "max_new_tokens=4"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert f"inferred from weight shapes: resampler type={kind}" in log
    assert "lora.r=16" in log and "taken from resolved_config.yaml" in log
    assert "not verified: without checkpoint_metadata.json" in log
    if kind == "qformer":  # no shape tells the head count: the run's config does
        assert "resampler.num_attention_heads=4" in log and "resampler.cross_attention_frequency=2" in log
    metrics = json.loads((stage_dir / "eval" / "synthpano-test" / "metrics.json").read_text())
    assert metrics["rebuilt_without_metadata"]["inferred"]["resampler type"] == kind


def test_a_rebuilt_checkpoint_is_the_saved_model(finetune_runs, tmp_path):
    from vlm_resampler import load_from_run

    run_dir = finetune_runs["qformer"]
    assert same_model(load_from_run(run_dir / "finetune"), load_from_run(without_metadata(run_dir, tmp_path)))


def test_without_any_config_the_missing_values_are_named_then_taken_from_the_user(
    finetune_runs, smoke_config, tmp_path
):
    from omegaconf import OmegaConf

    from vlm_resampler import load_from_run
    from vlm_resampler.runs.provenance import UserSettings
    from vlm_resampler.runs.reconstruct_parts import required_groups

    run_dir = finetune_runs["qformer"]
    stage_dir = without_metadata(run_dir, tmp_path, keep_config=False)
    with pytest.raises(ShapeInferenceError, match="num_attention_heads.*pass resampler.num_attention_heads="):
        load_from_run(stage_dir)
    cfg = smoke_config()
    groups = {g: OmegaConf.to_container(cfg[g], resolve=True) for g in required_groups()}
    user = UserSettings(resampler={"num_attention_heads": 4}, groups=groups)
    with pytest.raises(ShapeInferenceError, match="pass model.lora.alpha="):
        load_from_run(stage_dir, user=user)
    user.lora["alpha"] = 32
    assert same_model(load_from_run(run_dir / "finetune"), load_from_run(stage_dir, user=user))
    with pytest.raises(ValueError, match="resampler.num_attention_head is not a parameter"):
        load_from_run(
            stage_dir, user=UserSettings(resampler={"num_attention_head": 4}, groups=groups, lora={"alpha": 32})
        )


def test_eval_without_any_config_names_the_groups_to_choose(finetune_runs, tmp_path):
    stage_dir = without_metadata(finetune_runs["mlp"], tmp_path, keep_config=False)
    done = run_cli("eval.py", f"checkpoint_dir={stage_dir}", "debug=smoke")
    assert done.returncode == 2
    assert "no weight says which backbone, view" in done.stderr
    assert all(f"{group}=<option>" in done.stderr for group in ("backbone", "view", "data"))


def test_a_saved_config_that_disagrees_with_the_weights_names_the_tensor(finetune_runs, tmp_path):
    from vlm_resampler import load_from_run

    stage_dir = without_metadata(finetune_runs["qformer"], tmp_path)
    config = stage_dir.parent / layout.RESOLVED_CONFIG
    config.write_text(config.read_text().replace("hidden_dim: 64", "hidden_dim: 32"))
    with pytest.raises(
        CheckpointMismatch,
        match=r"resampler.query_tokens: resolved_config.yaml \(model.resampler\) builds shape \[8, 32\], the weights have \[8, 64\]",
    ):
        load_from_run(stage_dir)


def test_metadata_that_disagrees_with_the_weights_names_the_tensor_and_both_shapes(finetune_runs, tmp_path):
    from vlm_resampler import load_from_run

    copy = tmp_path / "mlp"
    shutil.copytree(finetune_runs["mlp"], copy)
    path = copy / "finetune" / layout.METADATA
    meta = json.loads(path.read_text())
    meta["model"]["resampler"]["hidden_dim"] = 128  # trained with 96
    path.write_text(json.dumps(meta))
    with pytest.raises(
        CheckpointMismatch, match=r"resampler.layers.0.weight: model expects shape \[128, 64\], file has \[96, 64\]"
    ):
        load_from_run(copy / "finetune")


def test_bimamba_needs_norm_first_from_the_user_when_nothing_records_it(smoke_config, tmp_path):
    """A stage saved outside a run dir (no resolved_config.yaml): pre- vs post-norm cannot be told
    from the weights, so it must be supplied; then the rebuilt model is the saved one."""
    from omegaconf import OmegaConf

    from vlm_resampler import load_from_run
    from vlm_resampler.runs.provenance import UserSettings
    from vlm_resampler.runs.reconstruct_parts import required_groups
    from vlm_resampler.training.run import resolved_container, run_stage

    cfg = smoke_config(
        "resampler=bimamba",
        "resampler.hidden_dim=32",
        "resampler.depth=1",
        "resampler.d_state=4",
        "resampler.expand=1.5",
        "resampler.norm_first=false",
        "stage.resampler.max_steps=1",
    )
    result = run_stage(resolved_container(cfg), "resampler", tmp_path, None)
    (result.stage_dir / layout.METADATA).unlink()
    groups = {g: OmegaConf.to_container(cfg[g], resolve=True) for g in required_groups()}
    with pytest.raises(ShapeInferenceError, match="norm_first: pre- and post-norm.*pass resampler.norm_first="):
        load_from_run(result.stage_dir, user=UserSettings(groups=groups))
    rebuilt = load_from_run(result.stage_dir, user=UserSettings(resampler={"norm_first": False}, groups=groups))
    assert same_model(result.model, rebuilt)
    assert rebuilt.resampler.blocks[0].norm_first is False


# The other two types through the same command lines (slow: a training run each; mlp and qformer
# above run in the fast suite). Non-default heads / norm_first show the values no shape reveals
# coming from the run's config.
SLOW_TYPES = {
    "bimamba": [
        "resampler=bimamba",
        "resampler.hidden_dim=32",
        "resampler.depth=1",
        "resampler.d_state=4",
        "resampler.expand=1.5",
        "resampler.norm_first=false",
    ],
    "perceiver": [
        "resampler=perceiver",
        "resampler.hidden_dim=32",
        "resampler.num_latents=8",
        "resampler.depth=1",
        "resampler.heads=4",
        "resampler.dim_head=8",
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(SLOW_TYPES))
def test_eval_from_the_dir_alone_and_without_metadata(kind, tmp_path):
    from vlm_resampler import load_from_run

    run_dir = train_smoke_finetune(tmp_path, kind, SLOW_TYPES[kind])
    done = run_cli(
        "eval.py",
        f"checkpoint_dir={run_dir / 'finetune'}",
        "debug=smoke",
        "baselines=false",
        "meteor=false",
        "max_new_tokens=4",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    stage_dir = without_metadata(run_dir, tmp_path / "copy")
    done = run_cli(
        "eval.py", f"checkpoint_dir={stage_dir}", "debug=smoke", "baselines=false", "meteor=false", "max_new_tokens=4"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"inferred from weight shapes: resampler type={kind}" in done.stdout + done.stderr
    assert same_model(load_from_run(run_dir / "finetune"), load_from_run(stage_dir))
