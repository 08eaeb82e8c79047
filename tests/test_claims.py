"""The claims' verdicts (claims.py) on results made up to fall on each side of
every rule: a difference holds beyond twice its standard error and one test
image, is contradicted as far the other way, and is within noise otherwise."""

from __future__ import annotations

import pytest

from claims import (
    Figure,
    Summary,
    all_claims,
    compare,
    comparison_panels,
    interpolate,
    models_table,
    report_markdown,
    trade_off,
)


def test_compare_holds_is_contradicted_or_within_noise():
    high, low = Figure.of([0.90, 0.91, 0.92]), Figure.of([0.50, 0.52, 0.51])
    assert compare(high, low) == "holds"
    assert compare(low, high) == "contradicted"
    noisy = Figure.of([0.40, 0.95, 0.60])
    assert compare(noisy, low) == "within noise"  # the spread is larger than the difference
    assert compare(Figure.of([0.5010, 0.5011, 0.5012]), Figure.of([0.5000, 0.5001, 0.5002]),
                   resolution=1 / 360) == "within noise"  # less than one image of 360
    assert compare(Summary(0.9, 0.01, 3), Summary(0.8, 0.01, 3)) == "holds"
    assert compare(Figure.of([0.9]), Figure.of([0.8])).startswith("holds (one seed")


def test_figure_mean_and_sample_std():
    figure = Figure.of([1, 2, 3, 4])
    assert figure.mean == 2.5 and figure.std == pytest.approx(1.2909944, rel=1e-6) and figure.n == 4
    assert figure.pct(1) == "250.0 ± 129.1%" and Figure.of([0.5]).std == 0.0


def test_interpolate_on_the_line_between_the_points_and_none_outside():
    assert interpolate([1.0, 3.0], [10.0, 30.0], 2.0) == 20.0
    assert interpolate([1.0, 3.0, 5.0], [0.1, 0.5, 0.6], 4.0) == pytest.approx(0.55)
    assert interpolate([1.0, 3.0], [10.0, 30.0], 4.0) is None


def profile(acc: float, blocks: float = 10.0, flops: float = 1.2e8, **extra) -> dict:
    return {"accuracy": acc, "block_usage": blocks, "block_usage_std": 0.5, "flops": flops,
            "resnet_flops": flops - 2.45e7, "unique_policies": 5, "images": 360, **extra}


def results(jitter=(0.0, 0.004, -0.004), learned: float = 0.9, firstk: float = 0.3) -> dict:
    """Three seeds of made-up runs: BlockDrop well above the heuristics, the
    curriculum above none, easy images on fewer blocks, shallower ResNets below."""
    runs = {}
    for seed, j in enumerate(jitter):
        runs[seed] = {
            "cl": profile(0.6 + j, 6.0, reward=0.30 + j), "nocl": profile(0.3 + j, 9.0, reward=-0.2 + j),
            "k_frozen": 6, "firstk_frozen": profile(firstk + j, 6.0), "randomk_frozen": profile(0.2 + j, 6.0),
            "ft": {"-1": profile(0.95 + j, 8.0, 0.9e8), "-5": profile(learned + 0.09 + j, 9.0, 1.1e8),
                   "-10": profile(0.995 + j, 11.0, 1.3e8)},
            "k_ft": 9, "firstk_ft": profile(0.97 + j, 9.0), "randomk_ft": profile(0.96 + j, 9.0),
            "ft_nocl": profile(0.9 + j, 12.0),
            "instance": {"easy_blocks": 8.0 + j, "hard_blocks": 10.0 + j},
        }
    shallow = {f"R{d}_Digits": [profile(0.80 + d / 200 + j, flops=f + 2.45e7) for j in jitter]
               for d, f in ((14, 5.3e7), (20, 8.1e7), (26, 1.09e8))}
    return {"model": "R32_Digits", "test_images": 360, "seeds": [0, 1, 2], "penalty": -5.0, "penalty_key": "-5",
            "penalty_keys": ["-1", "-5", "-10"], "full": profile(0.989, 15.0, 1.62e8), "shallow": shallow,
            "runs": runs}


def test_every_claim_is_judged_from_the_runs():
    claims = {c.number: c for c in all_claims(results())}
    assert list(claims) == ["1", "1b", "2", "3", "3b", "4", "5"]
    assert claims["1"].verdict == "holds" and "FirstK 30.0 ± 0.4%" in claims["1"].ours
    assert claims["1b"].verdict == "holds"
    assert claims["2"].verdict == "partly" and "rises" in claims["2"].words  # accuracy up, but 6 -> 9 blocks
    assert claims["3"].verdict == "holds"
    assert claims["3b"].verdict == "holds"
    assert claims["4"].verdict == "holds"
    assert claims["5"].verdict == "holds"
    assert "88.6%" in claims["1"].paper and "93.6%" in claims["2"].paper  # the paper's figures, quoted


def test_a_claim_that_does_not_hold_says_so():
    claims = {c.number: c for c in all_claims(results(firstk=0.7))}
    assert claims["1"].verdict == "does not hold" and "heuristic" in claims["1"].words
    worse = {c.number: c for c in all_claims(results(learned=0.8))}  # BlockDrop finetuned at 89%: below FirstK-FT
    assert worse["1b"].verdict == "does not hold"
    assert worse["3"].verdict != "holds"


def test_the_report_shows_every_claim_the_models_and_the_figures():
    r = results()
    claims = all_claims(r)
    text = report_markdown(r, claims, {"summary": "Made up.", "settings": "- none", "command": "python reproduce.py",
                                       "minutes": 1.5, "step_minutes": 20.0, "machine": "a CPU"})
    assert text.count("\n| 1") >= 2 and "| 5 |" in text and "figures/tradeoff.png" in text
    assert "over 3 seeds" in text and "ran on a CPU: its steps took 20.0 minutes" in text
    table = models_table(r)
    assert "| BlockDrop finetuned, γ = -5 | 99.0 ± 0.4% |" in table
    points = trade_off(r)
    assert [p["label"] for p in points["BlockDrop"]] == ["γ=-1", "γ=-5", "γ=-10"]
    assert [p["label"] for p in points["shallower ResNets"]] == ["R14", "R20", "R26"]
    assert points["shallower ResNets"][0]["flops"] == pytest.approx(5.3e7)  # their own FLOPs: no policy network
    panels = comparison_panels(r)
    assert [title for title, _ in panels][0] == "after the curriculum, ResNet frozen"
    assert panels[0][1][0][1] == pytest.approx(0.6)
