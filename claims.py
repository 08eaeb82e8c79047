"""The paper's claims (SPEC section 9), judged on the results of a plan.

Each claim says what it needs of the data (``needs``, checked by
``precondition``), which runs it reads (``requires``), which curricula must
have plateaued (``plateaued``), and how it is judged (``judge``). ``assess``
applies them in this order, and the verdict is one of ``Verdict``:

- *not measured*: a run it reads is missing, or a figure of it is not a number;
- *not testable here*: the data does not give the claim a chance to show;
- *still rising*: a curriculum it rests on had not stopped improving at its
  last epochs (the verdict it would have had is said beside);
- otherwise *holds*, *partly*, *does not hold* or *within noise*.

A difference over seeds holds when it is larger than twice its standard
error and than one test image; it is contradicted when it goes the other way
by as much. Two networks trained once differ beyond the test set's noise
when the gap is over twice the binomial standard error of the two
accuracies. Adding a claim is adding one ``Claim`` to ``CLAIMS``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from experiment import HEURISTIC_NAMES, HEURISTICS, Curve, Results, Sample


class Verdict(StrEnum):
    HOLDS = "holds"
    PARTLY = "partly"
    DOES_NOT_HOLD = "does not hold"
    WITHIN_NOISE = "within noise"
    NOT_TESTABLE = "not testable here"
    NOT_MEASURED = "not measured"
    STILL_RISING = "still rising"


# --------------------------------------------------------------------------
# comparisons
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation and count, where the values themselves
    are not at hand (a curve interpolated between measured points)."""

    mean: float
    std: float
    n: int


def compare(better: Sample | Summary, worse: Sample | Summary, resolution: float = 0.0) -> Verdict:
    """Whether ``better`` is above ``worse``: HOLDS, DOES_NOT_HOLD (the other way
    by as much), WITHIN_NOISE, or NOT_MEASURED when either is not a number."""
    if math.isnan(better.mean + worse.mean + better.std + worse.std):
        return Verdict.NOT_MEASURED
    diff = better.mean - worse.mean
    se = math.sqrt(better.std ** 2 / better.n + worse.std ** 2 / worse.n)
    margin = max(2 * se, resolution)
    if diff > margin:
        return Verdict.HOLDS
    if diff < -margin:
        return Verdict.DOES_NOT_HOLD
    return Verdict.WITHIN_NOISE


def judge(*verdicts: Verdict) -> Verdict:
    """One verdict for several comparisons: holds only when all hold."""
    if any(v is Verdict.NOT_MEASURED for v in verdicts):
        return Verdict.NOT_MEASURED
    if all(v is Verdict.HOLDS for v in verdicts):
        return Verdict.HOLDS
    if any(v is Verdict.DOES_NOT_HOLD for v in verdicts):
        return Verdict.DOES_NOT_HOLD
    return Verdict.WITHIN_NOISE


def beyond_test_noise(high: float, low: float, images: int) -> bool:
    """Two accuracies of networks measured once on the same ``images`` test
    images: the gap is over twice its binomial standard error and one image."""
    if math.isnan(high + low):
        return False
    se = math.sqrt((high * (1 - high) + low * (1 - low)) / images)
    return high - low > max(2 * se, 1 / images)


RISE_TOLERANCE = 0.01  # a rise of the mean training reward smaller than this is no rise


def still_rising(curve: Curve | None) -> bool:
    """Whether a curriculum's training reward was still rising at its end: over
    the epochs after the handover (when the policy decides every block), the
    mean of the last fifth (at least 3 epochs) is above the mean of the fifth
    before by more than twice its standard error and ``RISE_TOLERANCE``. Too
    few epochs after the handover to tell count as rising; no curve, as rising."""
    if curve is None:
        return True
    after = [r for e, r in zip(curve.epoch, curve.reward) if e >= curve.handover]
    window = max(3, len(after) // 5)
    if len(after) < 2 * window:
        return True
    last, before = after[-window:], after[-2 * window:-window]
    rise = statistics.fmean(last) - statistics.fmean(before)
    se = math.sqrt((statistics.variance(last) + statistics.variance(before)) / window)
    return rise > max(2 * se, RISE_TOLERANCE)


# --------------------------------------------------------------------------
# the claims
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Claim:
    number: str
    claim: str
    paper: str  # the paper's figure, quoted as the paper's
    needs: str  # what the claim needs of the data, in words
    requires: Callable[[Results], list[str]]  # the runs it reads
    precondition: Callable[[Results], str | None]  # why the data cannot show it, or None
    judge: Callable[[Results], tuple[Verdict, str, str]]  # verdict, our figures, the verdict in words
    plateaued: tuple[str, ...] = ("cl",)  # the curricula (per seed) it rests on


@dataclass
class Assessment:
    number: str
    claim: str
    paper: str
    needs: str
    ours: str
    verdict: Verdict
    words: str


def seeds_of(results: Results, *runs: str) -> list[str]:
    return [f"seed_{seed}/{run}" for seed in results.seeds for run in runs]


def missing(results: Results, names: list[str]) -> list[str]:
    """The runs among ``names`` that gave no figures (not run, or not numbers)."""
    def measured(name: str) -> bool:
        o = results.get(name)
        values = ([o.profile.accuracy, o.profile.block_usage, o.profile.flops] if o.profile else
                  [o.easy_blocks, o.hard_blocks] if o.easy_blocks is not None else [])
        return bool(values) and all(v is not None and math.isfinite(v) for v in values)
    return [name for name in names if not measured(name)]


def assess(claim: Claim, results: Results) -> Assessment:
    def done(verdict: Verdict, ours: str, words: str) -> Assessment:
        return Assessment(claim.number, claim.claim, claim.paper, claim.needs, ours, verdict, words)

    absent = missing(results, claim.requires(results))
    if absent:
        note = results.get(absent[0]).note or "no figures"
        return done(Verdict.NOT_MEASURED, "—", f"{absent[0]} was not measured ({note})"
                    + (f", nor {len(absent) - 1} more" if len(absent) > 1 else ""))
    verdict, ours, words = claim.judge(results)
    reason = claim.precondition(results)
    if reason:
        return done(Verdict.NOT_TESTABLE, ours, f"{reason}; the comparison gives: {verdict.value}")
    rising = [f"{run} (seed {seed})" for run in claim.plateaued
              for seed, curve in zip(results.seeds, results.curves(run)) if still_rising(curve)]
    if rising:
        return done(Verdict.STILL_RISING, ours, f"the training reward of {', '.join(rising)} was still rising at "
                                                f"its last epochs; the comparison gives: {verdict.value} ({words})")
    return done(verdict, ours, words)


def all_claims(results: Results) -> list[Assessment]:
    return [assess(claim, results) for claim in CLAIMS]


def _res(results: Results) -> float:
    return 1 / results.test_images


def _heuristics_over_seeds(results: Results, stage: str) -> dict[str, Sample]:
    return {h: results.over_seeds(f"{h}_{stage}") for h in HEURISTICS}


def _learned_run(results: Results, stage: str) -> str:
    return "cl" if stage == "frozen" else f"ft_{results.penalty_key}"


def _blocks_matter(stage: str) -> Callable[[Results], str | None]:
    """Claims 1, 1b and 4 need a ResNet that loses accuracy under the
    heuristics: if one of them already matches the full network at the block
    count, no policy can be shown better than it."""
    def check(results: Results) -> str | None:
        full = results.value("full", "accuracy")
        best = max(HEURISTICS, key=lambda h: results.over_seeds(f"{h}_{stage}").mean)
        acc = results.over_seeds(f"{best}_{stage}").mean
        if not beyond_test_noise(full, acc, results.test_images):
            return (f"{HEURISTIC_NAMES[best]} ({'frozen' if stage == 'frozen' else 'finetuned'}) at the same block "
                    f"count is within the test set's noise of the full network ({100 * acc:.1f}% against "
                    f"{100 * full:.1f}%): there is nothing for a learned policy to win")
        return None
    return check


def judge_heuristics(stage: str) -> Callable[[Results], tuple[Verdict, str, str]]:
    def judged(results: Results) -> tuple[Verdict, str, str]:
        run = _learned_run(results, stage)
        bd, blocks = results.over_seeds(run), results.over_seeds(run, "block_usage")
        rivals = _heuristics_over_seeds(results, stage)
        k = results.over_seeds(run, "k")
        verdict = judge(*(compare(bd, h, _res(results)) for h in rivals.values()))
        ours = (f"BlockDrop {bd.pct()} at {blocks.num()} blocks; "
                + ", ".join(f"{HEURISTIC_NAMES[h]} {s.pct()}" for h, s in rivals.items()) + f" at K = {k.num(1)}")
        words = {Verdict.HOLDS: "the learned policy is more accurate than every heuristic at the same block count",
                 Verdict.DOES_NOT_HOLD: "a heuristic policy is more accurate at the same block count"}.get(
            verdict, "the differences are within the spread over seeds")
        return verdict, ours, words
    return judged


def judge_finetuning(results: Results) -> tuple[Verdict, str, str]:
    ft = f"ft_{results.penalty_key}"
    cl_acc, cl_blocks = results.over_seeds("cl"), results.over_seeds("cl", "block_usage")
    ft_acc, ft_blocks = results.over_seeds(ft), results.over_seeds(ft, "block_usage")
    recovers, falls = compare(ft_acc, cl_acc, _res(results)), compare(cl_blocks, ft_blocks, 0.01)
    verdict = judge(recovers, falls)
    if verdict is not Verdict.HOLDS and recovers is Verdict.HOLDS:
        verdict = Verdict.PARTLY
    ours = (f"after the curriculum {cl_acc.pct()} at {cl_blocks.num()} blocks; after finetuning "
            f"(γ = {results.penalty_key}) {ft_acc.pct()} at {ft_blocks.num()} blocks")
    fall = {Verdict.HOLDS: "falls", Verdict.DOES_NOT_HOLD: "rises"}.get(falls, "stays within noise")
    words = f"accuracy {'recovers' if recovers is Verdict.HOLDS else 'does not recover clearly'}; block usage {fall}"
    return verdict, ours, words


def _recovered(results: Results) -> str | None:
    full, cl = results.value("full", "accuracy"), results.over_seeds("cl").mean
    if not beyond_test_noise(full, cl, results.test_images):
        return (f"the curriculum's policy on the frozen ResNet ({100 * cl:.1f}%) is within the test set's noise of "
                f"the full network ({100 * full:.1f}%): there is no accuracy to recover")
    return None


def shallow_curve(results: Results) -> tuple[list[float], list[float]]:
    """The ResNets of the recipe in order of FLOPs: the shallower ones and,
    the deepest, the deep ResNet with every block: (FLOPs, accuracies)."""
    names = [f"shallow/{n}/profile" for n in results.shallower] + ["full"]
    points = sorted((results.value(n, "resnet_flops"), results.value(n, "accuracy")) for n in names)
    return [p[0] for p in points], [p[1] for p in points]


def _depth_pays(results: Results) -> str | None:
    full = results.value("full", "accuracy")
    for name in results.shallower:
        acc = results.value(f"shallow/{name}/profile", "accuracy")
        if not beyond_test_noise(full, acc, results.test_images):
            return (f"the deep base ({100 * full:.1f}%) does not beat {name} ({100 * acc:.1f}%) by more than the "
                    "test set's noise: on this data depth does not pay")
    return None


def judge_shallow(results: Results) -> tuple[Verdict, str, str]:
    """BlockDrop at each penalty against the ResNets of the same recipe at the
    same FLOPs, interpolated between the two around BlockDrop's FLOPs."""
    xs, accs = shallow_curve(results)
    parts, verdicts = [], []
    for key in (f"{p:g}" for p in results.penalties):
        bd, flops = results.over_seeds(f"ft_{key}"), results.over_seeds(f"ft_{key}", "flops").mean
        if not xs[0] <= flops <= xs[-1]:
            parts.append(f"γ = {key}: {bd.pct()} at {flops:.2E} FLOPs, outside the ResNets' range")
            continue
        shallow = Summary(float(np.interp(flops, xs, accs)), 0.0, 1)
        verdicts.append(compare(bd, shallow, _res(results)))
        parts.append(f"γ = {key}: {bd.pct()} at {flops:.2E} FLOPs against {100 * shallow.mean:.1f}% "
                     f"({verdicts[-1].value})")
    verdict = judge(*verdicts) if verdicts else Verdict.WITHIN_NOISE
    names = ", ".join(results.shallower)
    words = ("at every penalty" if verdict is Verdict.HOLDS else
             "no penalty gives FLOPs within the ResNets' range" if not verdicts else
             "not at every penalty, or within the spread")
    return verdict, "; ".join(parts) + f" (the ResNets {names} and the full one, interpolated at equal FLOPs)", words


def judge_curve(results: Results) -> tuple[Verdict, str, str]:
    """A harsher penalty (more negative) buys accuracy with FLOPs."""
    keys = [f"{p:g}" for p in sorted(results.penalties, reverse=True)]  # -1, -5, -10
    flops = [results.over_seeds(f"ft_{k}", "flops").mean for k in keys]
    accs = [results.over_seeds(f"ft_{k}") for k in keys]
    ours = "; ".join(f"γ = {k}: {a.pct()} at {f:.2E}" for k, a, f in zip(keys, accs, flops))
    up = bool(np.all(np.diff(flops) >= 0))
    ordered = up and bool(np.all(np.diff([a.mean for a in accs]) >= 0))
    verdict = Verdict.HOLDS if ordered else Verdict.PARTLY if up else Verdict.DOES_NOT_HOLD
    words = {Verdict.HOLDS: "a harsher penalty gives more FLOPs and more accuracy",
             Verdict.PARTLY: "FLOPs grow with the penalty, accuracy not everywhere"}.get(
        verdict, "FLOPs do not grow with the penalty")
    return verdict, ours, words


def _two_penalties(results: Results) -> str | None:
    return None if len(results.penalties) > 1 else "one penalty draws no curve"


def judge_curriculum(results: Results) -> tuple[Verdict, str, str]:
    """With the curriculum against without it, after the curriculum (test reward) and after finetuning."""
    ft = f"ft_{results.penalty_key}"
    cl_r, no_r = results.over_seeds("cl", "reward"), results.over_seeds("nocl", "reward")
    cl_a, no_a = results.over_seeds("cl"), results.over_seeds("nocl")
    ft_a, ftno_a = results.over_seeds(ft), results.over_seeds("ft_nocl")
    verdicts = [compare(cl_r, no_r), compare(ft_a, ftno_a, _res(results))]
    ours = (f"after the curriculum: reward {cl_r.num(3)} with, {no_r.num(3)} without (accuracy {cl_a.pct()} "
            f"against {no_a.pct()}); after finetuning (γ = {results.penalty_key}): {ft_a.pct()} against "
            f"{ftno_a.pct()}")
    verdict = judge(*verdicts)
    if verdict is not Verdict.HOLDS and Verdict.HOLDS in verdicts:
        verdict = Verdict.PARTLY
    words = {Verdict.HOLDS: "the curriculum gives the better policy, before and after finetuning",
             Verdict.PARTLY: "the curriculum helps at one stage only",
             Verdict.DOES_NOT_HOLD: "without the curriculum the policy learns better here"}.get(
        verdict, "with and without the curriculum the policies are within the spread over seeds")
    return verdict, ours, words


def _difficulty_differs(results: Results) -> str | None:
    """Easy and hard images must differ for the base: it is more accurate on
    the easy half (the images it is most confident about) beyond the noise."""
    easy = results.value(f"seed_{results.seeds[0]}/instance", "easy_accuracy")
    hard = results.value(f"seed_{results.seeds[0]}/instance", "hard_accuracy")
    if easy is None or hard is None or not beyond_test_noise(easy, hard, results.test_images // 2):
        return (f"the base is about as accurate on the hard half as on the easy half ({_pct(hard)} against "
                f"{_pct(easy)}): the images' difficulty hardly differs for it")
    return None


def _pct(value: float | None) -> str:
    return "not measured" if value is None else f"{100 * value:.1f}%"


def judge_instance(results: Results) -> tuple[Verdict, str, str]:
    """Images the full ResNet is most confident about (the easy half) take fewer blocks."""
    easy, hard = results.over_seeds("instance", "easy_blocks"), results.over_seeds("instance", "hard_blocks")
    ft = f"ft_{results.penalty_key}"
    unique, spread = results.over_seeds(ft, "unique_policies"), results.over_seeds(ft, "block_usage_std")
    verdict = judge(compare(hard, easy, 0.01))
    ours = (f"easy half {easy.num()} blocks, hard half {hard.num()}; {unique.num(1)} distinct policies, "
            f"a spread of {spread.num()} blocks per image (γ = {results.penalty_key})")
    words = {Verdict.HOLDS: "the policy gives the easy images shorter paths",
             Verdict.DOES_NOT_HOLD: "the easy images take more blocks"}.get(
        verdict, "the difference between easy and hard images is within the spread")
    return verdict, ours, words


PAPER = {
    "table1": "CIFAR-10 ResNet-32, ResNet frozen: full network 92.3%; FirstK 16.6%, RandomK 20.5%, DistributeK 23.4% "
              "at K = 10; BlockDrop 88.6% at 9.4 blocks (Table 1)",
    "table1_ft": "CIFAR-10 ResNet-32, finetuned: FirstK 84.3%, RandomK 88.9%, DistributeK 90.2% at K = 7; BlockDrop "
                 "91.3% at 6.9 blocks (Table 1)",
    "finetune": "R110 on CIFAR-10: 75.4% at 20.10 blocks after the curriculum, 93.6% at 16.93 after finetuning "
                "(γ = -10); R101 on ImageNet: 74.6% at 29.79, then 76.4% at 24.77 (γ = -5)",
    "shallow": "R110 with BlockDrop at 16.93 blocks: 93.6%, above the 15-block ResNet-32's 92.3%",
    "curve": "accuracy against FLOPs over penalties (the paper's Fig. 3 and 4)",
    "curriculum": "without the curriculum the policy learns worse (no figure)",
    "instance": "easy images take fewer blocks; frequent policies group similar images (the paper's Fig. 5 and 6)",
}


def _runs(*runs: str, full: bool = True, shallow: bool = False) -> Callable[[Results], list[str]]:
    def names(results: Results) -> list[str]:
        chosen = [r.replace("{ft}", f"ft_{results.penalty_key}") for r in runs]
        out = (["full"] if full else []) + seeds_of(results, *chosen)
        return out + ([f"shallow/{n}/profile" for n in results.shallower] if shallow else [])
    return names


def _all_penalties(results: Results) -> list[str]:
    return ["full"] + seeds_of(results, "cl", *(f"ft_{p:g}" for p in results.penalties))


CLAIMS = [
    Claim("1", "Learned policies beat FirstK, RandomK and DistributeK at the same block count (the ResNet frozen, "
               "after the curriculum)", PAPER["table1"],
          "a frozen ResNet that loses accuracy under the heuristics at that block count",
          _runs("cl", *(f"{h}_frozen" for h in HEURISTICS)), _blocks_matter("frozen"), judge_heuristics("frozen")),
    Claim("1b", "Learned policies beat FirstK, RandomK and DistributeK at the same block count (each finetuned as "
                "BlockDrop is)", PAPER["table1_ft"],
          "a ResNet that, finetuned under a heuristic at that block count, stays below the full network",
          _runs("{ft}", *(f"{h}_ft" for h in HEURISTICS)), _blocks_matter("ft"), judge_heuristics("ft")),
    Claim("2", "Joint finetuning recovers accuracy while block usage falls", PAPER["finetune"],
          "a curriculum policy below the full network's accuracy, so that there is something to recover",
          _runs("cl", "{ft}"), _recovered, judge_finetuning),
    Claim("3", "BlockDrop on a deep ResNet beats a shallower ResNet of the same cost", PAPER["shallow"],
          "a deep base that beats every shallower ResNet of the same recipe by more than the test set's noise",
          lambda r: _all_penalties(r) + [f"shallow/{n}/profile" for n in r.shallower], _depth_pays, judge_shallow),
    Claim("3b", "The penalty traces an accuracy-against-FLOPs curve", PAPER["curve"], "two penalties or more",
          _all_penalties, _two_penalties, judge_curve),
    Claim("4", "The curriculum makes the policy learnable", PAPER["curriculum"],
          "a frozen ResNet that loses accuracy under the heuristics, as claim 1",
          _runs("cl", "nocl", "{ft}", "ft_nocl", *(f"{h}_frozen" for h in HEURISTICS)), _blocks_matter("frozen"),
          judge_curriculum, plateaued=("cl", "nocl")),
    Claim("5", "Policies are instance-specific: easy images take fewer blocks", PAPER["instance"],
          "images whose difficulty differs: the base more accurate on its easy half than on its hard half",
          _runs("{ft}", "instance"), _difficulty_differs, judge_instance),
]
