"""The claims' verdicts (claims.py) on results made up to fall on each side of
every rule: a difference holds beyond twice its standard error and one test
image, is contradicted as far the other way, and is within noise otherwise; a
claim whose data cannot show it is not testable here, one with a missing or
NaN figure is not measured, and one resting on a curriculum whose reward was
still rising says so. The report built from them (report.py)."""

from __future__ import annotations

import math

import pytest

from claims import CLAIMS, Summary, Verdict, all_claims, beyond_test_noise, compare, judge, still_rising
from experiment import HEURISTICS, Curve, Outcome, Profile, Results, Sample
from report import comparison_panels, models_table, report_markdown, table1, trade_off


def test_compare_holds_is_contradicted_within_noise_or_not_measured():
    high, low = Sample.of([0.90, 0.91, 0.92]), Sample.of([0.50, 0.52, 0.51])
    assert compare(high, low) is Verdict.HOLDS
    assert compare(low, high) is Verdict.DOES_NOT_HOLD
    assert compare(Sample.of([0.40, 0.95, 0.60]), low) is Verdict.WITHIN_NOISE  # the spread is larger
    assert compare(Sample.of([0.5010, 0.5011, 0.5012]), Sample.of([0.5000, 0.5001, 0.5002]),
                   resolution=1 / 360) is Verdict.WITHIN_NOISE  # less than one image of 360
    assert compare(Summary(0.9, 0.01, 3), Summary(0.8, 0.01, 3)) is Verdict.HOLDS
    assert compare(Sample.of([0.9, math.nan, 0.9]), low) is Verdict.NOT_MEASURED  # NaN is never within noise
    assert compare(Sample.of([None, 0.9]), low) is Verdict.NOT_MEASURED
    assert judge(Verdict.HOLDS, Verdict.NOT_MEASURED) is Verdict.NOT_MEASURED
    assert judge(Verdict.HOLDS, Verdict.WITHIN_NOISE) is Verdict.WITHIN_NOISE


def test_sample_mean_and_sample_std():
    sample = Sample.of([1, 2, 3, 4])
    assert sample.mean == 2.5 and sample.std == pytest.approx(1.2909944, rel=1e-6) and sample.n == 4
    assert sample.pct(1) == "250.0 ± 129.1%" and Sample.of([0.5]).std == 0.0
    assert Sample.of([0.5, None]).pct() == "not measured"


def test_two_networks_measured_once_differ_beyond_the_test_sets_noise():
    assert beyond_test_noise(0.92, 0.89, 10000)  # 3 points on 10,000 images: about 7 standard errors
    assert not beyond_test_noise(0.989, 0.983, 360)  # two images of 360
    assert not beyond_test_noise(0.989, 0.994, 360)


def rising_curve(end: float, epochs: int = 40, handover: int = 14, noise: float = 0.0) -> Curve:
    reward = [-0.5 + (end + 0.5) * e / (epochs - 1) + noise * (-1) ** e for e in range(epochs)]
    return Curve(list(range(epochs)), reward, [0.5] * epochs, [10.0] * epochs, handover)


def flat_curve(level: float = 0.2, epochs: int = 40, handover: int = 14) -> Curve:
    reward = [level + 0.02 * (-1) ** e for e in range(epochs)]  # noise around a level
    return Curve(list(range(epochs)), reward, [0.5] * epochs, [10.0] * epochs, handover)


def test_a_curriculum_is_still_rising_until_its_reward_stops_improving():
    assert not still_rising(flat_curve())
    assert still_rising(rising_curve(0.5))  # a steady climb to its last epoch
    assert not still_rising(rising_curve(-0.49))  # a climb of 0.01 in 40 epochs: within the tolerance
    assert still_rising(flat_curve(epochs=18))  # 4 epochs after the handover: too few to tell
    assert still_rising(None)


def profile(acc: float, blocks: float = 10.0, flops: float = 1.2e8) -> Profile:
    return Profile(accuracy=acc, block_usage=blocks, block_usage_std=0.5, flops=flops, resnet_flops=flops - 2.45e7,
                   unique_policies=5, images=360)


def made_up(jitter=(0.0, 0.004, -0.004), learned: float = 0.9, firstk: float = 0.3, shallow_acc: float = 0.80,
            curve: Curve | None = None, easy_accuracy: float = 1.0) -> Results:
    """Three seeds of made-up runs: BlockDrop well above the heuristics, the
    curriculum above none, easy images on fewer blocks, shallower ResNets below."""
    outcomes = {"base": Outcome(path="base.t7"), "full": Outcome(profile=profile(0.989, 15.0, 1.62e8), k=15)}
    for d, f in ((14, 5.3e7), (20, 8.1e7), (26, 1.09e8)):
        outcomes[f"shallow/R{d}_Digits/profile"] = Outcome(profile=profile(shallow_acc + d / 200, 15.0, f + 2.45e7))
    for seed, j in enumerate(jitter):
        runs = {"cl": Outcome(profile(0.6 + j, 6.0), curve or flat_curve(), 0.30 + j, "cl.t7", 6),
                "nocl": Outcome(profile(0.3 + j, 9.0), curve or flat_curve(-0.2), -0.2 + j, "nocl.t7", 9),
                "ft_-1": Outcome(profile(0.95 + j, 8.0, 0.9e8), k=8),
                "ft_-5": Outcome(profile(learned + 0.09 + j, 9.0, 1.1e8), k=9),
                "ft_-10": Outcome(profile(0.995 + j, 11.0, 1.3e8), k=11),
                "ft_nocl": Outcome(profile(0.9 + j, 12.0), k=12),
                "instance": Outcome(easy_blocks=8.0 + j, hard_blocks=10.0 + j, easy_accuracy=easy_accuracy,
                                    hard_accuracy=0.90)}
        for h, acc in zip(HEURISTICS, (firstk, 0.2, 0.25)):
            runs[f"{h}_frozen"] = Outcome(profile(acc + j, 6.0), k=6)
            runs[f"{h}_ft"] = Outcome(profile(0.95 + j, 9.0), k=9)
        outcomes.update({f"seed_{seed}/{name}": o for name, o in runs.items()})
    return Results("R32_Digits", 15, 360, [0, 1, 2], [-1.0, -5.0, -10.0], -5.0, outcomes)


def verdicts(results: Results) -> dict[str, Verdict]:
    return {a.number: a.verdict for a in all_claims(results)}


def test_every_claim_is_judged_from_the_runs():
    assessments = {a.number: a for a in all_claims(made_up())}
    assert list(assessments) == ["1", "1b", "2", "3", "3b", "4", "5"] == [c.number for c in CLAIMS]
    assert {n: a.verdict for n, a in assessments.items()} == {
        "1": Verdict.HOLDS, "1b": Verdict.HOLDS, "2": Verdict.PARTLY, "3": Verdict.HOLDS, "3b": Verdict.HOLDS,
        "4": Verdict.HOLDS, "5": Verdict.HOLDS}
    assert "FirstK 30.0 ± 0.4%" in assessments["1"].ours and "DistributeK 25.0 ± 0.4%" in assessments["1"].ours
    assert "rises" in assessments["2"].words  # accuracy up, but 6 -> 9 blocks
    assert "88.6%" in assessments["1"].paper and "93.6%" in assessments["2"].paper  # the paper's figures, quoted


def test_a_claim_that_does_not_hold_or_is_within_noise_says_so():
    assert verdicts(made_up(firstk=0.7))["1"] is Verdict.DOES_NOT_HOLD
    assert verdicts(made_up(learned=0.8))["1b"] is Verdict.DOES_NOT_HOLD  # finetuned at 89%: below the heuristics
    noisy = verdicts(made_up(jitter=(0.0, 0.3, -0.3), firstk=0.5))
    assert noisy["1"] is Verdict.WITHIN_NOISE


def test_a_claim_the_data_cannot_show_is_not_testable_here():
    deep_pays_not = {a.number: a for a in all_claims(made_up(shallow_acc=0.93))}  # R14 at 100%: above the base
    assert deep_pays_not["3"].verdict is Verdict.NOT_TESTABLE and "depth does not pay" in deep_pays_not["3"].words
    same = {a.number: a for a in all_claims(made_up(easy_accuracy=0.905))}  # the base: 90.5% against 90%
    assert same["5"].verdict is Verdict.NOT_TESTABLE and "difficulty" in same["5"].words


def test_a_missing_or_nan_figure_is_not_measured_never_within_noise():
    results = made_up()
    results.outcomes["seed_1/distributek_frozen"] = Outcome(note="DistributeK needs 3 blocks")
    results.outcomes["seed_2/ft_nocl"].profile.accuracy = math.nan
    assessed = {a.number: a for a in all_claims(results)}
    assert assessed["1"].verdict is Verdict.NOT_MEASURED and "seed_1/distributek_frozen" in assessed["1"].words
    assert "DistributeK needs 3 blocks" in assessed["1"].words
    assert assessed["4"].verdict is Verdict.NOT_MEASURED
    assert assessed["1b"].verdict is Verdict.HOLDS  # it reads neither


def test_a_claim_on_a_curriculum_still_rising_says_so():
    assessed = {a.number: a for a in all_claims(made_up(curve=rising_curve(0.5)))}
    assert assessed["1"].verdict is Verdict.STILL_RISING
    assert "seed 0" in assessed["1"].words and "the comparison gives: holds" in assessed["1"].words
    assert assessed["3b"].verdict is Verdict.STILL_RISING  # every finetuned model starts from the curriculum
    results = made_up()
    results.outcomes["seed_2/nocl"].curve = rising_curve(0.5)  # only the run without a curriculum
    assert verdicts(results)["4"] is Verdict.STILL_RISING and verdicts(results)["1"] is Verdict.HOLDS


def test_results_survive_json():
    results = made_up()
    again = Results.from_json(results.to_json())
    assert again == results and again.over_seeds("cl", "k").mean == 6.0
    assert again.get("seed_0/cl").curve.handover == 14


def test_the_report_shows_every_claim_table_1_the_models_and_the_figures():
    r = made_up()
    assessments = all_claims(r)
    text = report_markdown(r, assessments, {"summary": "Made up.", "settings": "- none", "minutes": 1.5,
                                            "command": "python reproduce.py", "step_minutes": 20.0,
                                            "machine": "a CPU"})
    assert text.count("\n| 1") >= 2 and "| 5 |" in text and "figures/tradeoff.png" in text and "curves.png" in text
    assert "over 3 seeds" in text and "ran on a CPU: its steps took 20.0 minutes" in text
    table = table1(r)
    assert "| FirstK | 16.6/10 → 84.3/7 | 13.3/21 → 71.3/17 | 23.3/13 → 66.5/14 | 63.5/50 → 57.9/31 | " \
           "30.0 ± 0.4/6.0 → 95.0 ± 0.4/9.0 |" in table
    assert "| BlockDrop | 88.6/9.4 → 91.3/6.9 |" in table and "| full ResNet | 92.3/15 |" in table
    assert "| BlockDrop finetuned, γ = -5 | 99.0 ± 0.4% |" in models_table(r)
    points = trade_off(r)
    assert [p["label"] for p in points["BlockDrop"]] == ["γ=-1", "γ=-5", "γ=-10"]
    assert [p["label"] for p in points["shallower ResNets"]] == ["R14", "R20", "R26"]
    assert points["shallower ResNets"][0]["flops"] == pytest.approx(5.3e7)  # their own FLOPs: no policy network
    panels = comparison_panels(r)
    assert [title for title, _ in panels][0] == "after the curriculum, ResNet frozen"
    assert [bar[0] for bar in panels[0][1]] == ["BlockDrop", "FirstK", "RandomK", "DistributeK"]
    assert panels[0][1][0][1] == pytest.approx(0.6)
