"""ranges.Range: one declaration of what a value may be, for constructors and stage values."""

from __future__ import annotations

from typing import Annotated

import pytest

from vlm_resampler.ranges import (
    AT_LEAST_ONE,
    BOOL,
    DROPOUT_RATE,
    OutOfRange,
    Range,
    checks_ranges,
    declared_ranges,
    one_of,
)


def test_a_range_tells_switches_from_numbers_and_keeps_its_bounds():
    assert AT_LEAST_ONE.accepts(1) and not AT_LEAST_ONE.accepts(0)
    assert not AT_LEAST_ONE.accepts(True), "a switch is not a count"
    assert not AT_LEAST_ONE.accepts(2.0) and not AT_LEAST_ONE.accepts("2")
    assert BOOL.accepts(False) and not BOOL.accepts(0)
    assert DROPOUT_RATE.accepts(0) and DROPOUT_RATE.accepts(0.5) and not DROPOUT_RATE.accepts(1.0)
    steps = Range(int, "an int > 0, or -1", gt=0, also=(-1,))
    assert steps.accepts(-1) and steps.accepts(3) and not steps.accepts(-2) and not steps.accepts(0)
    pool = Range(int, "null or an int >= 1", ge=1, also=(None,))
    assert pool.accepts(None) and not pool.accepts(False)


def test_a_checked_constructor_refuses_a_value_outside_its_range_naming_the_key():
    class Part:
        @checks_ranges("part")
        def __init__(self, width: Annotated[int, AT_LEAST_ONE], dropout: Annotated[float, DROPOUT_RATE] = 0.0):
            self.width = width

    assert Part(3).width == 3
    assert set(declared_ranges(Part.__init__.__wrapped__)) == {"width", "dropout"}
    with pytest.raises(ValueError, match=r"^part\.width=0: expected an int >= 1$"):
        Part(0)
    with pytest.raises(ValueError, match=r"^part\.dropout=1\.5: expected a float in \[0, 1\)$"):
        Part(2, dropout=1.5)


def test_closed_bounds_choices_and_a_refusal_renamed_for_the_key_it_was_built_under():
    pitch = Range(float, "degrees in [-90, 90]", ge=-90, le=90)
    assert pitch.accepts(90) and pitch.accepts(-90.0) and not pitch.accepts(90.5)
    mode = one_of("concat", "dedupe_overlap")
    assert mode.accepts("concat") and not mode.accepts("merge")
    assert not mode.accepts(0), "a number is no choice"
    with pytest.raises(OutOfRange) as refused:
        AT_LEAST_ONE.check("depth", 0)
    assert (refused.value.key, refused.value.value) == ("depth", 0)
    renamed = refused.value.under("projector")
    assert isinstance(renamed, ValueError) and str(renamed) == "projector.depth=0: expected an int >= 1"


def test_a_part_built_under_several_keys_is_refused_under_the_one_it_was_built_as():
    from functools import partial

    from vlm_resampler.models.projector import TokenMLP
    from vlm_resampler.models.vlm import build_part

    with pytest.raises(OutOfRange, match=r"^model\.overlap_head\.depth=0: expected an int >= 1$"):
        build_part("model.overlap_head", partial(TokenMLP, output_dim=4, depth=0), input_dim=8)
    assert build_part("projector", partial(TokenMLP, depth=2), input_dim=8, output_dim=4).output_dim == 4
