"""Resampler hyperparameters from weight shapes alone, for checkpoints whose metadata is gone.

One rule per resampler type, registered with `@rule`: how to recognise the type from its
parameter names, and which constructor arguments its tensor shapes fix. Arguments that no
shape reveals (dropout, norm_first, attention heads, ...) are listed as `Unknown`, each saying
whether it changes the outputs in eval mode. `InferredResampler.resolve` combines the inferred
values with values from other sources (a saved config, the command line) and refuses to guess
an unknown that matters.

A new resampler type adds its rule here; the round-trip test in tests/test_shape_inference.py
then checks it on random hyperparameters.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from vlm_resampler.errors import UserFacingError
from vlm_resampler.resamplers.base import require

Shapes = dict[str, tuple[int, ...]]
INFERRED = "inferred from weight shapes"


class ShapeInferenceError(UserFacingError, ValueError):
    """The weights do not have the shapes of any resampler we can rebuild."""


@dataclass(frozen=True)
class Unknown:
    """A constructor argument that no tensor shape reveals."""

    name: str
    affects_outputs: bool  # in eval mode
    why: str
    placeholder: Any = None  # used when it does not affect outputs and nothing supplies it


@dataclass
class InferredResampler:
    type_name: str
    target: str  # the class's import path, as a `_target_`
    hparams: dict[str, Any]  # constructor arguments fixed by shapes (input_dim included)
    unknown: tuple[Unknown, ...]
    derived: dict[str, Any] = field(default_factory=dict)  # shape facts that are not arguments
    notes: tuple[str, ...] = ()
    finish: Callable[[dict[str, Any], dict[str, Any]], None] | None = None

    def resolve(self, sources: Sequence[tuple[str, Mapping[str, Any]]]) -> "ResolvedResampler":
        """Fill the unknowns from `sources` ([(label, values)], first source wins).

        An unknown that changes outputs and is in no source is an error that says how to
        supply it; one that does not is given its placeholder and reported as assumed.
        """
        values, origin = dict(self.hparams), {k: INFERRED for k in self.hparams}
        for item in self.unknown:
            for label, supplied in sources:
                if item.name in supplied:
                    values[item.name], origin[item.name] = supplied[item.name], label
                    break
        if self.finish is not None:
            self.finish(values, origin)
        missing = [u for u in self.unknown if u.name not in values and u.affects_outputs]
        if missing:
            raise ShapeInferenceError(self._missing_message(missing, sources))
        for item in self.unknown:
            if item.name not in values:
                values[item.name] = item.placeholder
                origin[item.name] = f"assumed {item.placeholder!r}: no effect at inference ({item.why})"
        return ResolvedResampler(self, values, origin)

    def _missing_message(self, missing: list[Unknown], sources) -> str:
        searched = ", ".join(label for label, _ in sources) or "no other source"
        lines = [f"cannot rebuild the {self.type_name} resampler from its weights alone; searched: {searched}."]
        for item in missing:
            lines.append(f"  {item.name}: {item.why}; pass resampler.{item.name}=... on the command line")
        return "\n".join(lines)


@dataclass
class ResolvedResampler:
    inferred: InferredResampler
    kwargs: dict[str, Any]  # every constructor argument
    origin: dict[str, str]  # argument -> where its value came from

    def build(self):
        from hydra.utils import get_class

        return get_class(self.inferred.target)(**self.kwargs)

    def config_node(self) -> dict[str, Any]:
        """The resampler's node in a model `_target_` tree (its input width comes from the vision encoder)."""
        node = {"_target_": self.inferred.target, "_partial_": True}
        return node | {k: v for k, v in self.kwargs.items() if k != "input_dim"}


# ---- shape access -------------------------------------------------------------------------

def shapes_of(state: Mapping[str, Any]) -> Shapes:
    """Key -> shape, from tensors or from shapes already read (e.g. safetensors headers)."""
    return {k: tuple(int(d) for d in getattr(v, "shape", v)) for k, v in state.items()}


def _shape(shapes: Shapes, key: str, ndim: int) -> tuple[int, ...]:
    if key not in shapes:
        raise ShapeInferenceError(f"expected a tensor {key!r}, found only: {_preview(shapes)}")
    if len(shapes[key]) != ndim:
        raise ShapeInferenceError(f"{key}: expected a {ndim}-d tensor, found shape {list(shapes[key])}")
    return shapes[key]


def _indices(shapes: Shapes, prefix: str) -> list[int]:
    """The i of every `{prefix}.{i}.` key, checked to run 0..n-1 without gaps."""
    pattern = re.compile(rf"{re.escape(prefix)}\.(\d+)\.")
    found = sorted({int(m.group(1)) for k in shapes if (m := pattern.match(k))})
    if found != list(range(len(found))):
        raise ShapeInferenceError(f"{prefix}.*: expected indices 0..{len(found) - 1}, found {found}")
    return found


def _same(what: str, values: dict[str, int]) -> int:
    """The one value that every named tensor dimension must share."""
    distinct = sorted(set(values.values()))
    if len(distinct) != 1:
        raise ShapeInferenceError(f"{what} differs between tensors: " + ", ".join(f"{k}={v}" for k, v in values.items()))
    return distinct[0]


def _preview(shapes: Shapes, n: int = 6) -> str:
    keys = sorted(shapes)
    if not keys:
        return "(no tensors)"
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} keys)" if len(keys) > n else "")


def _target(cls) -> str:
    return f"{cls.__module__}.{cls.__name__}"


# ---- registry -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    type_name: str
    matches: Callable[[Shapes], bool]  # from key names only
    infer: Callable[[Shapes], InferredResampler]


RULES: dict[str, Rule] = {}


def rule(type_name: str, matches: Callable[[Shapes], bool]):
    def register(infer: Callable[[Shapes], InferredResampler]):
        RULES[type_name] = Rule(type_name, matches, infer)
        return infer

    return register


def detect_type(shapes: Shapes) -> str:
    """The resampler type whose parameter names these are (exactly one must match)."""
    found = [name for name, r in RULES.items() if r.matches(shapes)]
    if len(found) != 1:
        what = "no resampler type" if not found else f"several types ({', '.join(found)})"
        raise ShapeInferenceError(
            f"the resampler weights match {what}: keys {_preview(shapes)}; known types: {', '.join(RULES)}"
        )
    return found[0]


def infer_resampler(state: Mapping[str, Any]) -> InferredResampler:
    """Type and shape-determined hyperparameters of a resampler state dict (keys without the
    `resampler.` prefix; tensors or shapes)."""
    shapes = shapes_of(state)
    return RULES[detect_type(shapes)].infer(shapes)


DROPOUT = Unknown("dropout", False, "dropout is inactive in eval mode", 0.0)


# ---- mlp ----------------------------------------------------------------------------------

_MLP_KEY = re.compile(r"layers\.(\d+)\.(weight|bias)$")


@rule("mlp", lambda s: any(_MLP_KEY.match(k) for k in s) and all(_MLP_KEY.match(k) or k == "pooled_position" for k in s))
def infer_mlp(shapes: Shapes) -> InferredResampler:
    from vlm_resampler.resamplers.mlp import MLPResampler

    linears = sorted(int(_MLP_KEY.match(k).group(1)) for k, v in shapes.items() if k.endswith("weight") and len(v) == 2)
    norms = sorted(int(_MLP_KEY.match(k).group(1)) for k, v in shapes.items() if k.endswith("weight") and len(v) == 1)
    depth, use_ln = len(linears), bool(norms)
    # Hidden layer i is Linear, [LayerNorm], GELU, Dropout: the module indices follow from depth and use_ln.
    stride = 4 if use_ln else 3
    expected_linears = [i * stride for i in range(depth)]
    expected_norms = [i * stride + 1 for i in range(depth - 1)] if use_ln else []
    if linears != expected_linears or norms != expected_norms:
        raise ShapeInferenceError(
            f"mlp layers.*: Linear layers at {linears} and LayerNorms at {norms}, but MLPResampler(depth={depth}, "
            f"use_ln={use_ln}) puts them at {expected_linears} and {expected_norms}"
        )
    weights = [_shape(shapes, f"layers.{i}.weight", 2) for i in linears]
    for i, (before, after) in enumerate(zip(weights, weights[1:])):
        if after[1] != before[0]:
            raise ShapeInferenceError(f"layers.{linears[i + 1]}.weight {list(after)} does not take the {before[0]} outputs of layers.{linears[i]}.weight")
    hparams = {"input_dim": weights[0][1], "latent_dimension": weights[-1][0], "depth": depth, "pool": None}
    if "pooled_position" in shapes:  # [pool * pool, input_dim]
        cells, width = shapes["pooled_position"]
        pool = math.isqrt(cells)
        if pool * pool != cells or width != hparams["input_dim"]:
            raise ShapeInferenceError(f"mlp pooled_position {[cells, width]}: expected [pool * pool, input_dim={hparams['input_dim']}]")
        hparams["pool"] = pool
    unknown = [DROPOUT]
    if depth > 1:
        hparams["hidden_dim"] = _same("mlp hidden width", {f"layers.{i}.weight[0]": w[0] for i, w in zip(linears, weights[:-1])})
        hparams["use_ln"] = use_ln
    else:
        # A single Linear: the hidden width and the norms between layers build nothing.
        unknown += [
            Unknown("hidden_dim", False, "depth 1 has no hidden layer", hparams["latent_dimension"]),
            Unknown("use_ln", False, "depth 1 has no norm between layers", False),
        ]
    return InferredResampler("mlp", _target(MLPResampler), hparams, tuple(unknown))


# ---- bimamba ------------------------------------------------------------------------------

@rule("bimamba", lambda s: "input_proj.weight" in s and any(".forward_mamba." in k for k in s))
def infer_bimamba(shapes: Shapes) -> InferredResampler:
    from vlm_resampler.resamplers.bimamba import BiMambaResampler

    hidden, input_dim = _shape(shapes, "input_proj.weight", 2)
    latent = _shape(shapes, "output_proj.weight", 2)[0]
    blocks = _indices(shapes, "blocks")
    if not blocks:
        raise ShapeInferenceError(f"bimamba: no blocks.0.* tensors; found {_preview(shapes)}")
    mixers = [f"blocks.{i}.{d}_mamba" for i in blocks for d in ("forward", "backward")]
    d_inner = _same("d_inner", {f"{m}.A_log[0]": _shape(shapes, f"{m}.A_log", 2)[0] for m in mixers}
                    | {f"{m}.in_proj.weight[0]/2": _shape(shapes, f"{m}.in_proj.weight", 2)[0] // 2 for m in mixers})
    d_state = _same("d_state", {f"{m}.A_log[1]": shapes[f"{m}.A_log"][1] for m in mixers})
    d_conv = _same("d_conv", {f"{m}.conv1d.weight[2]": _shape(shapes, f"{m}.conv1d.weight", 3)[2] for m in mixers})
    dt_rank = _same("dt_rank", {f"{m}.dt_proj.weight[1]": _shape(shapes, f"{m}.dt_proj.weight", 2)[1] for m in mixers})
    if dt_rank != math.ceil(hidden / 16):
        # MambaMixer derives dt_rank from the width; weights with another rank cannot be rebuilt.
        raise ShapeInferenceError(
            f"{mixers[0]}.dt_proj.weight: dt_rank {dt_rank}, but BiMambaResampler uses ceil(hidden_dim/16) = "
            f"{math.ceil(hidden / 16)} for hidden_dim {hidden} (input_proj.weight {[hidden, input_dim]})"
        )
    use_ln = "final_norm.weight" in shapes
    norms = [i for i in blocks if f"blocks.{i}.norm.weight" in shapes]
    if norms != (blocks if use_ln else []):
        raise ShapeInferenceError(f"bimamba: final_norm {'present' if use_ln else 'absent'} but block norms in blocks {norms}")
    expand, exact = expand_for(d_inner, hidden)
    hparams = {"input_dim": input_dim, "latent_dimension": latent, "hidden_dim": hidden, "depth": len(blocks),
               "expand": expand, "d_state": d_state, "d_conv": d_conv, "use_ln": use_ln}
    norm_first = Unknown(
        "norm_first",
        use_ln,
        "pre- and post-norm blocks have the same shapes but different outputs" if use_ln else "use_ln=false: no norm to place",
        True,
    )
    shown = f"{d_inner}/{hidden} = {expand!r}" if exact else f"{expand!r} (float rounding makes {d_inner}/{hidden} miss)"
    notes = (f"expand: the weights fix only d_inner = int(expand * hidden_dim) = {d_inner} (any expand in "
             f"[{d_inner}/{hidden}, {d_inner + 1}/{hidden}) gives it); reported as expand = {shown}, which reproduces it",)
    return InferredResampler("bimamba", _target(BiMambaResampler), hparams, (DROPOUT, norm_first),
                             {"d_inner": d_inner, "dt_rank": dt_rank}, notes)


def expand_for(d_inner: int, hidden: int) -> tuple[float, bool]:
    """An expand with int(expand * hidden) == d_inner; True when it is exactly d_inner / hidden."""
    ratio = d_inner / hidden
    if int(ratio * hidden) == d_inner:
        return ratio, True
    # Float rounding put ratio * hidden just below d_inner: aim at the middle of the interval.
    return (d_inner + 0.5) / hidden, False


# ---- perceiver ----------------------------------------------------------------------------

@rule("perceiver", lambda s: "latents" in s and any(k.startswith("layers.") and ".to_q." in k for k in s))
def infer_perceiver(shapes: Shapes) -> InferredResampler:
    from vlm_resampler.resamplers.perceiver import PerceiverResampler

    num_latents, hidden = _shape(shapes, "latents", 2)
    layers = _indices(shapes, "layers")
    inner = _same("heads * dim_head", {f"layers.{i}.to_q.weight[0]": _shape(shapes, f"layers.{i}.to_q.weight", 2)[0] for i in layers})
    ff_width = _same("feed-forward width", {f"layers.{i}.ff.1.weight[0]": _shape(shapes, f"layers.{i}.ff.1.weight", 2)[0] for i in layers})
    if ff_width % hidden:
        raise ShapeInferenceError(f"layers.0.ff.1.weight: width {ff_width} is not a multiple of hidden_dim {hidden} (ff_mult must be an int)")
    hparams = {"input_dim": _shape(shapes, "input_proj.weight", 2)[1], "latent_dimension": _shape(shapes, "output_proj.weight", 2)[0],
               "num_latents": num_latents, "depth": len(layers), "hidden_dim": hidden, "ff_mult": ff_width // hidden}
    unknown = [DROPOUT]
    if inner == 1:
        hparams |= {"heads": 1, "dim_head": 1}
    else:
        why = (f"to_q.weight has heads * dim_head = {inner} rows; every split of {inner} has these shapes "
               "but attends differently (either one of heads and dim_head gives the other)")
        unknown += [Unknown("heads", True, why), Unknown("dim_head", True, why)]
    return InferredResampler("perceiver", _target(PerceiverResampler), hparams, tuple(unknown),
                             {"heads * dim_head": inner}, finish=_split_heads(inner))


def _split_heads(inner: int):
    """heads and dim_head: either one gives the other (their product is fixed by to_q)."""

    def finish(values: dict, origin: dict) -> None:
        if "heads" in values and "dim_head" not in values:
            _check_divisor("heads", values["heads"], inner)
            values["dim_head"], origin["dim_head"] = inner // values["heads"], f"heads * dim_head = {inner} (to_q.weight) / heads"
        elif "dim_head" in values and "heads" not in values:
            _check_divisor("dim_head", values["dim_head"], inner)
            values["heads"], origin["heads"] = inner // values["dim_head"], f"heads * dim_head = {inner} (to_q.weight) / dim_head"
        elif "heads" in values:
            require(values["heads"] * values["dim_head"] == inner, "heads", values["heads"],
                    f"heads * dim_head = {inner} (to_q.weight rows); dim_head={values['dim_head']}")

    return finish


def _check_divisor(key: str, value, inner: int) -> None:
    require(isinstance(value, int) and value >= 1 and inner % value == 0, key, value,
            f"a divisor of heads * dim_head = {inner} (the rows of to_q.weight)")


# ---- qformer ------------------------------------------------------------------------------

@rule("qformer", lambda s: "query_tokens" in s)
def infer_qformer(shapes: Shapes) -> InferredResampler:
    from vlm_resampler.resamplers.qformer import QFormerResampler

    queries, hidden = _shape(shapes, "query_tokens", 2)
    layers = _indices(shapes, "layers")
    if not layers:
        raise ShapeInferenceError(f"qformer: no layers.0.* tensors; found {_preview(shapes)}")
    cross = [i for i in layers if f"layers.{i}.cross_attn.in_proj_weight" in shapes]
    frequency, note = cross_frequency(cross, len(layers))
    intermediate = _same("intermediate_size", {f"layers.{i}.ff.1.weight[0]": _shape(shapes, f"layers.{i}.ff.1.weight", 2)[0] for i in layers})
    hparams = {"input_dim": _shape(shapes, "media_proj.weight", 2)[1], "latent_dimension": _shape(shapes, "output_proj.weight", 2)[0],
               "num_query_tokens": queries, "num_hidden_layers": len(layers), "hidden_dim": hidden,
               "intermediate_size": intermediate, "cross_attention_frequency": frequency}
    unknown = [DROPOUT]
    if hidden == 1:
        hparams["num_attention_heads"] = 1
    else:
        unknown.append(Unknown(
            "num_attention_heads", True,
            f"attention weights are [3*{hidden}, {hidden}] for every head count dividing {hidden}, but the outputs differ",
        ))
    return InferredResampler("qformer", _target(QFormerResampler), hparams, tuple(unknown),
                             {"cross_attention_layers": cross}, (note,) if note else (), finish=_check_heads(hidden))


def cross_frequency(cross: list[int], num_layers: int) -> tuple[int, str | None]:
    """The cross_attention_frequency f whose layers {i : i % f == 0} are exactly `cross`."""
    if cross == [0]:
        if num_layers == 1:
            return 1, None
        return num_layers, (f"cross_attention_frequency: only layer 0 has cross-attention, which every value "
                            f">= {num_layers} gives; reported as {num_layers}")
    frequency = cross[1] if len(cross) > 1 else 0
    if frequency == 0 or cross != list(range(0, num_layers, frequency)):
        raise ShapeInferenceError(
            f"qformer: cross-attention in layers {cross} of {num_layers}; QFormerResampler puts it in the layers "
            "i with i % cross_attention_frequency == 0, and no frequency gives these"
        )
    return frequency, None


def _check_heads(hidden: int):
    def finish(values: dict, origin: dict) -> None:
        heads = values.get("num_attention_heads")
        if heads is not None:
            require(isinstance(heads, int) and heads >= 1 and hidden % heads == 0, "num_attention_heads", heads,
                    f"a divisor of hidden_dim={hidden} (query_tokens.shape[1])")

    return finish
