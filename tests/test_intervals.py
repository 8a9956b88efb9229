"""Bootstrap intervals over panoramas (evaluation/intervals.py) and the per-example answer losses
the image-shuffle gap's interval is drawn from."""

from __future__ import annotations

import pytest
import torch

from vlm_resampler.evaluation.intervals import PanoramaBootstrap, interval_text

from conftest import write_eval


def panoramas(n: int, per: int = 1) -> list[str]:
    return [f"pano_{p:03d}.png" for p in range(n) for _ in range(per)]


def width(bounds: list[float]) -> float:
    return bounds[1] - bounds[0]


def test_a_score_every_panorama_shares_has_no_spread():
    units = panoramas(30, per=3)
    assert PanoramaBootstrap(units).interval([0.75] * len(units), units) == [0.75, 0.75]


def test_independent_answers_give_the_binomial_interval():
    """400 panoramas, one question each, half right: the normal approximation's 95% interval is
    0.5 +- 1.96 * sqrt(0.25 / 400) = 0.5 +- 0.049."""
    units = panoramas(400)
    low, high = PanoramaBootstrap(units).interval([i % 2 for i in range(400)], units)
    assert low < 0.5 < high
    assert 0.5 - low == pytest.approx(0.049, abs=0.008) and high - 0.5 == pytest.approx(0.049, abs=0.008)


def test_questions_of_one_panorama_move_together_so_the_panorama_is_what_is_resampled():
    """40 panoramas of 10 questions each, a panorama's questions all right or all wrong: really 40
    observations, not 400. Resampled by panorama the interval is about sqrt(10) times as wide as
    resampling the 400 questions one by one would make it (0.31 against 0.098)."""
    by_panorama = panoramas(40, per=10)
    hits = [int(u[-7:-4]) % 2 for u in by_panorama]
    clustered = PanoramaBootstrap(by_panorama).interval(hits, by_panorama)
    one_by_one_units = [f"q{i}" for i in range(len(hits))]
    one_by_one = PanoramaBootstrap(one_by_one_units).interval(hits, one_by_one_units)
    assert width(clustered) == pytest.approx(0.31, abs=0.05)
    assert width(one_by_one) == pytest.approx(0.098, abs=0.02)
    assert width(clustered) > 2.5 * width(one_by_one)


def test_the_resamples_are_fixed_by_the_seed_and_shared_by_every_metric():
    units = panoramas(25, per=2)
    values = [float(i % 7) for i in range(len(units))]
    first, again, other = (
        PanoramaBootstrap(units),
        PanoramaBootstrap(list(reversed(units))),
        PanoramaBootstrap(units, seed=1),
    )
    assert first.interval(values, units) == again.interval(values, units), "the order items come in does not matter"
    assert first.interval(values, units) != other.interval(values, units)
    # Two metrics of one eval are read off the same draws: their resampled means move together.
    doubled = first.means([2 * v for v in values], units)
    assert torch.allclose(torch.from_numpy(doubled), 2 * torch.from_numpy(first.means(values, units)))


def test_a_metric_of_a_few_panoramas_skips_the_resamples_that_drew_none_of_them():
    units = panoramas(20)
    bootstrap = PanoramaBootstrap(units)
    some = units[:2]
    means = bootstrap.means([1.0, 0.0], some)
    drew_none = (bootstrap.draws[:, :2].sum(axis=1) == 0).sum()
    assert drew_none > 0 and (means != means).sum() == drew_none, "NaN exactly where neither panorama was drawn"
    low, high = bootstrap.interval([1.0, 0.0], some)
    assert 0.0 <= low < high <= 1.0


def test_bad_input_is_named():
    units = panoramas(5)
    bootstrap = PanoramaBootstrap(units)
    with pytest.raises(ValueError, match="3 values for 5 panorama names"):
        bootstrap.interval([1.0, 2.0, 3.0], units)
    with pytest.raises(ValueError, match="elsewhere.png is not one of the 5 panoramas"):
        bootstrap.interval([1.0], ["elsewhere.png"])
    with pytest.raises(ValueError, match="no panoramas"):
        PanoramaBootstrap([])


def test_the_record_says_how_intervals_were_drawn_and_text_shows_them():
    units = panoramas(10)
    bootstrap = PanoramaBootstrap(units)
    record = bootstrap.record({"CIDEr": [1.25, 2.5]})
    assert record | {"panoramas": 10, "resamples": 1000, "seed": 0, "level": 0.95} == record
    assert interval_text(record, "CIDEr", 2) == " [1.25, 2.50]" and interval_text(record, "QA") == ""
    assert interval_text(None, "CIDEr") == "", "an eval written before intervals existed"


def test_each_examples_answer_loss_is_its_loss_alone(smoke_config):
    """answer_losses splits one batch's answer tokens back into rows: row i's loss equals the
    loss of example i in a batch of its own."""
    from vlm_resampler.runs.load import build_model
    from vlm_resampler.training.losses import answer_losses, next_token_loss
    from vlm_resampler.training.run import resolved_container

    from conftest import training_batch

    cfg = resolved_container(smoke_config())
    model = build_model(cfg["model"], seed=0).eval()
    batch = training_batch(cfg, n=3)
    lengths = (batch["labels"] != -100).sum(dim=1)
    assert len(set(lengths.tolist())) > 1, "answers of different lengths, so a wrong split would show"
    with torch.no_grad():
        rows = answer_losses(model, batch)
        alone = []
        for i in range(3):
            single = {k: v[i : i + 1] for k, v in batch.items() if isinstance(v, torch.Tensor)}
            alone.append(float(next_token_loss(model, single)[0]))
    assert rows.shape == (3,)
    assert rows.tolist() == pytest.approx(alone, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Two evals of the same items, compared item by item (launch/compare.py).
# ---------------------------------------------------------------------------------------------


def test_a_small_steady_difference_shows_paired_though_the_two_intervals_overlap(tmp_path):
    """Panoramas differ a lot in difficulty (CIDEr 0 to 4) and A beats B by 0.1 on each: each
    model's own interval is ~1 wide and they overlap, but resampled in pairs the difference is
    0.1 in every resample."""
    from vlm_resampler.evaluation.compare import compare, comparison_table

    units = panoramas(60)
    difficulty = [float(i % 5) for i in range(60)]
    a = write_eval(tmp_path / "a", [d + 0.1 for d in difficulty], units, correct=[i % 2 for i in range(60)])
    b = write_eval(tmp_path / "b", difficulty, units, correct=[i % 3 == 0 for i in range(60)])
    bootstrap = PanoramaBootstrap(units)
    alone_a, alone_b = bootstrap.interval([d + 0.1 for d in difficulty], units), bootstrap.interval(difficulty, units)
    assert alone_a[0] < alone_b[1], "the models' own intervals overlap"
    result = compare(a, b)
    cider = result["metrics"]["CIDEr"]
    assert cider["A_minus_B"] == pytest.approx(0.1) and cider["interval"] == [0.1, 0.1] and cider["A_above_B"] == 1
    qa = result["metrics"]["QA"]  # 30 of 60 against 20 of 60, on different panoramas: a real spread
    assert (
        qa["A_minus_B"] == pytest.approx(10 / 60, abs=1e-4) and qa["interval"][0] < qa["A_minus_B"] < qa["interval"][1]
    )
    assert 0.5 < qa["A_above_B"] < 1 and set(result["metrics"]) == {"CIDEr", "QA", "QA_colour"}
    table = comparison_table(result)
    assert "CIDEr" in table and "[+0.1000, +0.1000]" in table and "100% of resamples" in table


def test_evals_of_different_items_or_splits_are_refused_by_the_command_line(tmp_path):
    from conftest import run_cli

    a = write_eval(tmp_path / "a", [1.0, 2.0, 3.0], panoramas(3))
    other_items = write_eval(tmp_path / "b", [1.0, 2.0], panoramas(2))
    other_split = write_eval(tmp_path / "c", [1.0, 2.0, 3.0], panoramas(3), split="val")
    done = run_cli("compare.py", str(a), str(other_items))
    assert done.returncode == 2 and "the two evals scored different items (3 and 2" in done.stderr
    done = run_cli("compare.py", str(a), str(other_split))
    assert done.returncode == 2 and "split 'test' but" in done.stderr and "'val'" in done.stderr
    done = run_cli("compare.py", str(a), str(tmp_path))
    assert done.returncode == 2 and "no metrics.json and no item_scores.csv" in done.stderr
    assert "Traceback" not in done.stderr
    same = run_cli("compare.py", str(a), str(a), "--json", str(tmp_path / "same.json"))
    assert same.returncode == 0, same.stderr
    import json

    assert json.loads((tmp_path / "same.json").read_text())["metrics"]["CIDEr"]["interval"] == [0.0, 0.0]
