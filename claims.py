"""The paper's claims (SPEC section 9) as checks on measured results: each
claim in a sentence, the paper's figure (quoted as the paper's), ours as mean
± standard deviation over seeds, and a verdict in plain words.

A difference *holds* when it is larger than twice its standard error over
the seeds and than one test image; it is *contradicted* when it goes the
other way by as much; otherwise it is *within noise*. A network trained once
(the base, a shallower ResNet) counts as one value without spread; with one
seed on both sides there is no spread at all, and the verdict says so. ``reproduce.py`` gathers the results;
this module only reads them.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

PAPER = {
    "table1": "CIFAR-10 ResNet-32, ResNet frozen: full network 92.3%, FirstK 16.6%, RandomK 20.5%, "
              "BlockDrop 88.6% (the paper's Table 1)",
    "finetune": "R110 on CIFAR-10: 75.4% at 20.10 blocks after the curriculum, 93.6% at 16.93 after finetuning "
                "(γ = -10); R101 on ImageNet: 74.6% at 29.79, then 76.4% at 24.77 (γ = -5)",
    "shallow": "R110 with BlockDrop at 16.93 blocks: 93.6%, above the 15-block ResNet-32's 92.3%",
    "curve": "accuracy against FLOPs over penalties (the paper's Fig. 3 and 4)",
    "curriculum": "without the curriculum the policy learns worse (no figure)",
    "instance": "easy images take fewer blocks; frequent policies group similar images (the paper's Fig. 5 and 6)",
}


@dataclass(frozen=True)
class Figure:
    """A measured figure over seeds."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values) -> Figure:
        return cls(tuple(float(v) for v in values))

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        if any(math.isnan(v) for v in self.values):
            return math.nan
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    @property
    def n(self) -> int:
        return len(self.values)

    def pct(self, digits: int = 1) -> str:
        return f"{100 * self.mean:.{digits}f} ± {100 * self.std:.{digits}f}%"

    def num(self, digits: int = 2) -> str:
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation and count, where the values themselves
    are not at hand (a curve interpolated between two measured points)."""

    mean: float
    std: float
    n: int


def compare(better: Figure | Summary, worse: Figure | Summary, resolution: float = 0.0) -> str:
    """Whether ``better`` is above ``worse``: "holds", "contradicted" or "within noise"."""
    if math.isnan(better.mean + worse.mean + better.std + worse.std):
        return "not measured"
    diff = better.mean - worse.mean
    n = max(better.n, worse.n)  # one side may be a single network (the base, a shallower ResNet)
    se = math.sqrt(better.std ** 2 / better.n + worse.std ** 2 / worse.n)
    margin = max(2 * se, resolution)
    if n < 2:
        return "holds (one seed: no spread)" if diff > resolution else (
            "contradicted (one seed: no spread)" if diff < -resolution else "within one test image")
    if diff > margin:
        return "holds"
    if diff < -margin:
        return "contradicted"
    return "within noise"


def judge(*verdicts: str) -> str:
    """One word for several comparisons: holds only when all hold."""
    if all(v.startswith("holds") for v in verdicts):
        return "holds"
    if any(v.startswith("contradicted") for v in verdicts):
        return "does not hold"
    return "not shown (within noise)"


@dataclass
class Claim:
    number: str
    claim: str
    paper: str
    ours: str
    verdict: str  # "holds", "does not hold", "not shown (within noise)", "partly"
    words: str  # what the verdict means here, in a sentence


def interpolate(xs: list[float], ys: list[float], x: float) -> float | None:
    """``ys`` at ``x`` on the line through the points (``xs`` ascending); None outside them."""
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


def monotone(values: list[float]) -> bool:
    return all(a <= b for a, b in zip(values, values[1:]))


# --------------------------------------------------------------------------
# the claims, from the results that reproduce.py gathers
# --------------------------------------------------------------------------
def _over_seeds(results: dict, *keys, field: str = "accuracy") -> Figure:
    """One figure of one run over the seeds: ``results["runs"][seed][key][...][field]``."""
    values = []
    for run in results["runs"].values():
        for key in keys:
            run = run[key]
        values.append(run[field])
    return Figure.of(values)


def _resolution(results: dict) -> float:
    return 1 / results["test_images"]


def claim_heuristics(results: dict, stage: str) -> Claim:
    """Claim 1 (``stage`` "frozen": the curriculum's policy, the ResNet frozen) and 1b
    ("ft": after finetuning): BlockDrop against FirstK and RandomK at its block count."""
    learned = ("cl",) if stage == "frozen" else ("ft", results["penalty_key"])
    bd, blocks = _over_seeds(results, *learned), _over_seeds(results, *learned, field="block_usage")
    first, rand = _over_seeds(results, f"firstk_{stage}"), _over_seeds(results, f"randomk_{stage}")
    ks = Figure.of(run[f"k_{stage}"] for run in results["runs"].values())
    res = _resolution(results)
    verdict = judge(compare(bd, first, res), compare(bd, rand, res))
    when = "the ResNet frozen, after the curriculum" if stage == "frozen" else "each finetuned as BlockDrop is"
    ours = (f"BlockDrop {bd.pct()} at {blocks.num()} blocks; FirstK {first.pct()}, RandomK {rand.pct()} "
            f"at K = {ks.num(1)}" + (f"; full network {100 * results['full']['accuracy']:.1f}%"
                                     if stage == "frozen" else ""))
    words = {"holds": "the learned policy is more accurate than both heuristics at the same block count",
             "does not hold": "a heuristic policy is as accurate or more at the same block count",
             }.get(verdict, "the differences are within the spread over seeds")
    return Claim("1" if stage == "frozen" else "1b",
                 f"Learned policies beat FirstK and RandomK at the same block count ({when})",
                 PAPER["table1"] if stage == "frozen" else "— (the paper's Table 1 is without finetuning)",
                 ours, verdict, words)


def claim_finetuning(results: dict) -> Claim:
    """Claim 2: joint finetuning recovers accuracy while usage falls."""
    key = results["penalty_key"]
    cl_acc, cl_blocks = _over_seeds(results, "cl"), _over_seeds(results, "cl", field="block_usage")
    ft_acc, ft_blocks = _over_seeds(results, "ft", key), _over_seeds(results, "ft", key, field="block_usage")
    recovers = compare(ft_acc, cl_acc, _resolution(results))
    falls = compare(cl_blocks, ft_blocks, 0.01)
    verdict = judge(recovers, falls)
    if verdict != "holds" and recovers.startswith("holds"):
        verdict = "partly"
    ours = (f"after the curriculum {cl_acc.pct()} at {cl_blocks.num()} blocks; after finetuning "
            f"(γ = {results['penalty']:g}) {ft_acc.pct()} at {ft_blocks.num()} blocks")
    words = (f"accuracy {'recovers' if recovers.startswith('holds') else 'does not recover clearly'}; "
             f"block usage {'falls' if falls.startswith('holds') else 'rises' if falls.startswith('contra') else 'stays'}")
    return Claim("2", "Joint finetuning recovers accuracy while block usage falls", PAPER["finetune"], ours,
                 verdict, words)


def _shallow_curve(results: dict) -> tuple[list[float], list[Figure]]:
    """The ResNets of the recipe in order of FLOPs: the shallower ones and, the
    deepest, the deep ResNet itself with every block (its one base)."""
    nets = [*results["shallow"].values(), [results["full"]]]
    nets.sort(key=lambda profiles: statistics.fmean(p["resnet_flops"] for p in profiles))
    return ([statistics.fmean(p["resnet_flops"] for p in profiles) for profiles in nets],
            [Figure.of(p["accuracy"] for p in profiles) for profiles in nets])


def claim_shallow(results: dict) -> Claim:
    """Claim 3: BlockDrop on the deep ResNet against the ResNets of the same
    recipe at the same FLOPs, linearly interpolated between the two around
    BlockDrop's FLOPs (mean and spread alike, the spread over the shallower
    ResNets' seeds)."""
    xs, accs = _shallow_curve(results)
    parts, verdicts = [], []
    for key in results["penalty_keys"]:
        bd, flops = _over_seeds(results, "ft", key), _over_seeds(results, "ft", key, field="flops")
        means = interpolate(xs, [a.mean for a in accs], flops.mean)
        if means is None:
            parts.append(f"γ = {key}: {bd.pct()} at {flops.mean:.2E} FLOPs, outside the ResNets' range")
            continue
        stds = interpolate(xs, [a.std for a in accs], flops.mean)
        shallow = Summary(means, stds, max(a.n for a in accs))
        verdicts.append(compare(bd, shallow, _resolution(results)))
        parts.append(f"γ = {key}: {bd.pct()} at {flops.mean:.2E} FLOPs against {100 * means:.1f}% "
                     f"({verdicts[-1]})")
    verdict = judge(*verdicts) if verdicts else "not shown (no comparable point)"
    names = ", ".join(sorted(results["shallow"], key=lambda n: results["shallow"][n][0]["resnet_flops"]))
    return Claim("3", "BlockDrop on a deep ResNet beats a shallower ResNet of the same cost", PAPER["shallow"],
                 "; ".join(parts) + f" (the ResNets {names} and the full one, interpolated at equal FLOPs)", verdict,
                 "at every penalty" if verdict == "holds" else "not at every penalty, or within the spread")


def claim_curve(results: dict) -> Claim:
    """Claim 3b: a harsher penalty (more negative) buys accuracy with FLOPs."""
    keys = sorted(results["penalty_keys"], key=float, reverse=True)  # -1, -5, -10
    flops = [_over_seeds(results, "ft", k, field="flops") for k in keys]
    accs = [_over_seeds(results, "ft", k) for k in keys]
    points = "; ".join(f"γ = {k}: {a.pct()} at {f.mean:.2E}" for k, a, f in zip(keys, accs, flops))
    ordered = monotone([f.mean for f in flops]) and monotone([a.mean for a in accs])
    verdict = "holds" if ordered else "partly" if monotone([f.mean for f in flops]) else "does not hold"
    words = ("a harsher penalty gives more FLOPs and more accuracy" if ordered else
             "FLOPs grow with the penalty, accuracy not everywhere" if verdict == "partly" else
             "FLOPs do not grow with the penalty")
    return Claim("3b", "The penalty traces an accuracy-against-FLOPs curve", PAPER["curve"], points, verdict, words)


def claim_curriculum(results: dict) -> Claim:
    """Claim 4: with the curriculum against without it, after the curriculum (test reward) and after finetuning."""
    key = results["penalty_key"]
    cl_r, no_r = _over_seeds(results, "cl", field="reward"), _over_seeds(results, "nocl", field="reward")
    cl_a, no_a = _over_seeds(results, "cl"), _over_seeds(results, "nocl")
    ft_a, ftno_a = _over_seeds(results, "ft", key), _over_seeds(results, "ft_nocl")
    verdicts = [compare(cl_r, no_r, 0.0), compare(ft_a, ftno_a, _resolution(results))]
    ours = (f"after the curriculum: reward {cl_r.num(3)} with, {no_r.num(3)} without (accuracy {cl_a.pct()} "
            f"against {no_a.pct()}); after finetuning (γ = {results['penalty']:g}): {ft_a.pct()} against "
            f"{ftno_a.pct()}")
    verdict = judge(*verdicts)
    if verdict != "holds" and any(v.startswith("holds") for v in verdicts):
        verdict = "partly"
    words = {"holds": "the curriculum gives the better policy, before and after finetuning",
             "partly": "the curriculum helps at one stage only"}.get(
        verdict, "without the curriculum the policy learns as well or better here")
    return Claim("4", "The curriculum makes the policy learnable", PAPER["curriculum"], ours, verdict, words)


def claim_instance(results: dict) -> Claim:
    """Claim 5: images the full ResNet is most confident about (the easy half) take fewer blocks."""
    key = results["penalty_key"]
    easy = Figure.of(run["instance"]["easy_blocks"] for run in results["runs"].values())
    hard = Figure.of(run["instance"]["hard_blocks"] for run in results["runs"].values())
    unique = _over_seeds(results, "ft", key, field="unique_policies")
    spread = _over_seeds(results, "ft", key, field="block_usage_std")
    verdict = judge(compare(hard, easy, 0.01))
    ours = (f"easy half {easy.num()} blocks, hard half {hard.num()}; {unique.num(1)} distinct policies, "
            f"a spread of {spread.num()} blocks per image (γ = {results['penalty']:g})")
    words = {"holds": "the policy gives the easy images shorter paths",
             "does not hold": "the easy images do not take fewer blocks"}.get(
        verdict, "the difference between easy and hard images is within the spread")
    return Claim("5", "Policies are instance-specific: easy images take fewer blocks", PAPER["instance"], ours,
                 verdict, words)


def all_claims(results: dict) -> list[Claim]:
    return [claim_heuristics(results, "frozen"), claim_heuristics(results, "ft"), claim_finetuning(results),
            claim_shallow(results), claim_curve(results), claim_curriculum(results), claim_instance(results)]


# --------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------
def _point(label: str, profiles: list[dict], flops: str = "flops") -> dict:
    acc, cost = Figure.of(p["accuracy"] for p in profiles), Figure.of(p[flops] for p in profiles)
    blocks = Figure.of(p["block_usage"] for p in profiles)
    return {"label": label, "accuracy": acc.mean, "accuracy_std": acc.std, "flops": cost.mean, "flops_std": cost.std,
            "blocks": blocks.mean, "blocks_std": blocks.std, "seeds": acc.n}


def trade_off(results: dict) -> dict[str, list[dict]]:
    """The points of the trade-off, by series: BlockDrop at each penalty, the
    shallower ResNets (their own FLOPs: they run no policy network), and the
    finetuned baselines."""
    runs = list(results["runs"].values())
    return {
        "BlockDrop": [_point(f"γ={k}", [r["ft"][k] for r in runs]) for k in results["penalty_keys"]],
        "shallower ResNets": [_point(name.split("_")[0], profiles, "resnet_flops")
                              for name, profiles in results["shallow"].items()],
        "FirstK, finetuned": [_point("FirstK", [r["firstk_ft"] for r in runs])],
        "RandomK, finetuned": [_point("RandomK", [r["randomk_ft"] for r in runs])],
    }


def claims_table(claims: list[Claim], seeds: int) -> str:
    lines = [f"| # | claim | the paper's figure | ours (mean ± std over {seeds} seed{'s' * (seeds > 1)}) | "
             "holds here? |", "|---|---|---|---|---|"]
    for c in claims:
        lines.append(f"| {c.number} | {c.claim} | {c.paper} | {c.ours} | **{c.verdict}**: {c.words} |")
    return "\n".join(lines)


def models_table(results: dict) -> str:
    """Every model of the report: accuracy, blocks and FLOPs, mean ± std over seeds."""
    runs = list(results["runs"].values())
    rows = [("the deep ResNet, every block", [results["full"]], "resnet_flops"),
            ("BlockDrop after the curriculum (ResNet frozen)", [r["cl"] for r in runs], "flops"),
            ("FirstK, ResNet frozen", [r["firstk_frozen"] for r in runs], "flops"),
            ("RandomK, ResNet frozen", [r["randomk_frozen"] for r in runs], "flops"),
            ("without curriculum, after it (ResNet frozen)", [r["nocl"] for r in runs], "flops")]
    rows += [(f"BlockDrop finetuned, γ = {k}", [r["ft"][k] for r in runs], "flops") for k in results["penalty_keys"]]
    rows += [("FirstK, finetuned", [r["firstk_ft"] for r in runs], "flops"),
             ("RandomK, finetuned", [r["randomk_ft"] for r in runs], "flops"),
             (f"without curriculum, finetuned (γ = {results['penalty_key']})", [r["ft_nocl"] for r in runs], "flops")]
    rows += [(f"{name}, trained from scratch", profiles, "resnet_flops") for name, profiles in results["shallow"].items()]
    lines = ["| model | accuracy | blocks used | FLOPs per image |", "|---|---|---|---|"]
    for name, profiles, flops in rows:
        p = _point(name, profiles, flops)
        lines.append(f"| {name} | {100 * p['accuracy']:.1f} ± {100 * p['accuracy_std']:.1f}% | "
                     f"{p['blocks']:.2f} ± {p['blocks_std']:.2f} | {p['flops']:.2E} ± {p['flops_std']:.1E} |")
    return "\n".join(lines)


def report_markdown(results: dict, claims: list[Claim], meta: dict) -> str:
    seeds = len(results["seeds"])
    held = sum(c.verdict == "holds" for c in claims)
    return "\n\n".join([
        f"# The paper's claims on {results['model']}",
        f"{held} of the {len(claims)} claims hold on this data. {meta['summary']} Every figure is the mean ± "
        f"the standard deviation over {seeds} seed{'s' * (seeds > 1)} ({', '.join(map(str, results['seeds']))}) of "
        f"the curriculum and finetuning, on one base ResNet for all seeds, as in the paper; the test set has "
        f"{results['test_images']} images (one image is {100 / results['test_images']:.2f} points). A difference "
        "holds when it exceeds twice its standard error over the seeds and one test image.",
        claims_table(claims, seeds),
        "![accuracy against FLOPs](figures/tradeoff.png)\n\n![the comparisons](figures/comparisons.png)",
        "## Every model\n\n" + models_table(results),
        "## Settings\n\n" + meta["settings"],
        f"## Run\n\n`{meta['command']}` ran on {meta['machine']}: its steps took {meta['step_minutes']:.1f} minutes "
        f"when they ran, and this invocation {meta['minutes']:.1f} minutes (a finished step is skipped when the "
        "command is run again; each step is printed as the command that reproduces it).",
    ]) + "\n"


def comparison_panels(results: dict) -> list[tuple[str, list[tuple[str, float, float]]]]:
    """The bar charts' data: claim 1, claim 1b and claim 4, each bar (label, mean accuracy, std)."""
    def bar(label: str, *keys) -> tuple[str, float, float]:
        figure = _over_seeds(results, *keys)
        return label, figure.mean, figure.std

    key = results["penalty_key"]
    return [
        ("after the curriculum, ResNet frozen", [bar("BlockDrop", "cl"), bar("FirstK", "firstk_frozen"),
                                                 bar("RandomK", "randomk_frozen")]),
        (f"finetuned (γ = {key})", [bar("BlockDrop", "ft", key), bar("FirstK", "firstk_ft"),
                                    bar("RandomK", "randomk_ft")]),
        ("with and without the curriculum", [bar("curriculum", "cl"), bar("none", "nocl"),
                                             bar("curriculum,\nfinetuned", "ft", key),
                                             bar("none,\nfinetuned", "ft_nocl")]),
    ]
