"""The reproduction's report, from its results and the claims' assessments:
``report.md`` (the claims, the paper's Table 1 beside ours, the learning
curves, every model, the settings) and the data of its figures."""

from __future__ import annotations

import math

from claims import Assessment, Verdict, still_rising
from experiment import HEURISTIC_NAMES, HEURISTICS, Results, Sample

# The paper's Table 1 (SPEC section 9): accuracy % / K, on the frozen ResNet -> finetuned.
PAPER_TABLE1_COLUMNS = ("C10 R32", "C10 R110", "C100 R32", "C100 R110")
PAPER_TABLE1 = {
    "FirstK": ("16.6/10 → 84.3/7", "13.3/21 → 71.3/17", "23.3/13 → 66.5/14", "63.5/50 → 57.9/31"),
    "RandomK": ("20.5/10 → 88.9/7", "14.5/21 → 90.1/17", "38.3/13 → 67.6/14", "66.3/50 → 68.4/31"),
    "DistributeK": ("23.4/10 → 90.2/7", "13.0/21 → 92.7/17", "31.9/13 → 66.7/14", "49.6/50 → 69.9/31"),
    "BlockDrop": ("88.6/9.4 → 91.3/6.9", "75.4/20.1 → 93.6/16.9", "58.3/12.4 → 68.7/13.1", "72.1/49.1 → 73.7/30.2"),
    "full ResNet": ("92.3/15", "93.2/54", "69.3/15", "72.2/54"),
}


def _cell(acc: Sample, k: Sample) -> str:
    if not acc.measured:
        return "not measured"
    spread = f" ± {100 * acc.std:.1f}" if acc.n > 1 else ""
    return f"{100 * acc.mean:.1f}{spread}/{k.mean:.1f}"


def table1(results: Results) -> str:
    """The paper's whole Table 1 beside ours: accuracy % / K, frozen → finetuned."""
    ft = f"ft_{results.penalty_key}"
    ours = {HEURISTIC_NAMES[h]: (_cell(results.over_seeds(f"{h}_frozen"), results.over_seeds("cl", "k")),
                                 _cell(results.over_seeds(f"{h}_ft"), results.over_seeds(ft, "k")))
            for h in HEURISTICS}
    ours["BlockDrop"] = (_cell(results.over_seeds("cl"), results.over_seeds("cl", "block_usage")),
                         _cell(results.over_seeds(ft), results.over_seeds(ft, "block_usage")))
    full = _cell(results.single("full"), Sample.of([results.num_blocks]))
    lines = [f"| | {' | '.join(f'{c} (paper)' for c in PAPER_TABLE1_COLUMNS)} | {results.model} (ours, "
             f"{len(results.seeds)} seeds) |", "|---" * (len(PAPER_TABLE1_COLUMNS) + 2) + "|"]
    for name, paper in PAPER_TABLE1.items():
        mine = full if name == "full ResNet" else " → ".join(ours[name])
        lines.append(f"| {name} | {' | '.join(paper)} | {mine} |")
    return "\n".join(lines)


def claims_table(assessments: list[Assessment], seeds: int) -> str:
    lines = [f"| # | claim | the paper's figure | ours (mean ± std over {seeds} seed{'s' * (seeds > 1)}) | "
             "holds here? |", "|---|---|---|---|---|"]
    for a in assessments:
        lines.append(f"| {a.number} | {a.claim} | {a.paper} | {a.ours} | **{a.verdict.value}**: {a.words} |")
    return "\n".join(lines)


def needs_table(assessments: list[Assessment]) -> str:
    lines = ["| # | what the claim needs of the data | verdict |", "|---|---|---|"]
    lines += [f"| {a.number} | {a.needs} | {a.verdict.value} |" for a in assessments]
    return "\n".join(lines)


def _label(run: str, results: Results) -> str:
    for h in HEURISTICS:
        if run == f"{h}_frozen":
            return f"{HEURISTIC_NAMES[h]}, ResNet frozen, at the curriculum's K"
        if run == f"{h}_ft":
            return f"{HEURISTIC_NAMES[h]}, finetuned at BlockDrop's K (γ = {results.penalty_key})"
    if run.startswith("ft_") and run != "ft_nocl":
        return f"BlockDrop finetuned, γ = {run[3:]}"
    return {"cl": "BlockDrop after the curriculum (ResNet frozen)",
            "nocl": "without curriculum, after it (ResNet frozen)",
            "ft_nocl": f"without curriculum, finetuned (γ = {results.penalty_key})"}.get(run, run)


def seed_runs(results: Results) -> list[str]:
    """The per-seed runs that were profiled, in the order of the plan."""
    first = f"seed_{results.seeds[0]}/"
    return [name[len(first):] for name in results.outcomes if name.startswith(first) and name != first + "instance"]


def point(profiles: list[Sample], label: str) -> dict:
    acc, flops, blocks = profiles
    return {"label": label, "accuracy": acc.mean, "accuracy_std": acc.std, "flops": flops.mean,
            "flops_std": flops.std, "blocks": blocks.mean, "blocks_std": blocks.std, "seeds": acc.n}


def _profile(results: Results, run: str, flops: str = "flops", seeded: bool = True) -> list[Sample]:
    get = results.over_seeds if seeded else results.single
    return [get(run, "accuracy"), get(run, flops), get(run, "block_usage")]


def models_table(results: Results) -> str:
    """Every model of the report: accuracy, blocks and FLOPs, mean ± std over seeds."""
    rows = [("the deep ResNet, every block", _profile(results, "full", "resnet_flops", seeded=False))]
    rows += [(_label(run, results), _profile(results, run)) for run in seed_runs(results)]
    rows += [(f"{name}, trained from scratch", _profile(results, f"shallow/{name}/profile", "resnet_flops", False))
             for name in results.shallower]
    lines = ["| model | accuracy | blocks used | FLOPs per image |", "|---|---|---|---|"]
    for name, (acc, flops, blocks) in rows:
        if not acc.measured:
            lines.append(f"| {name} | not measured | | |")
            continue
        lines.append(f"| {name} | {acc.pct()} | {blocks.num()} | {flops.mean:.2E} ± {flops.std:.1E} |")
    return "\n".join(lines)


def plateau_table(results: Results) -> str:
    """Each curriculum's training reward at its end, and whether it was still rising."""
    lines = ["| run | seed | epochs | handover | reward, last epochs | still rising? |", "|---|---|---|---|---|---|"]
    for run, name in (("cl", "curriculum"), ("nocl", "no curriculum")):
        for seed, curve in zip(results.seeds, results.curves(run)):
            if curve is None:
                lines.append(f"| {name} | {seed} | not measured | | | |")
                continue
            tail = curve.reward[-max(3, len(curve.reward) // 10):]
            lines.append(f"| {name} | {seed} | {len(curve.epoch)} | {curve.handover} | "
                         f"{sum(tail) / len(tail):.3f} | {'yes' if still_rising(curve) else 'no'} |")
    return "\n".join(lines)


def trade_off(results: Results) -> dict[str, list[dict]]:
    """The points of the trade-off, by series: BlockDrop at each penalty, the
    shallower ResNets (their own FLOPs: they run no policy network), and the
    finetuned heuristics."""
    series = {"BlockDrop": [point(_profile(results, f"ft_{p:g}"), f"γ={p:g}") for p in results.penalties],
              "shallower ResNets": [point(_profile(results, f"shallow/{n}/profile", "resnet_flops", False),
                                          n.split("_")[0]) for n in results.shallower]}
    for h in HEURISTICS:
        series[f"{HEURISTIC_NAMES[h]}, finetuned"] = [point(_profile(results, f"{h}_ft"), HEURISTIC_NAMES[h])]
    return {k: [p for p in v if not math.isnan(p["accuracy"])] for k, v in series.items()}  # measured points only


def comparison_panels(results: Results) -> list[tuple[str, list[tuple[str, float, float]]]]:
    """The bar charts' data: claims 1, 1b and 4, each bar (label, mean accuracy, std)."""
    def bar(label: str, run: str) -> tuple[str, float, float]:
        sample = results.over_seeds(run)
        return label, sample.mean, sample.std

    ft = f"ft_{results.penalty_key}"
    return [
        ("after the curriculum, ResNet frozen",
         [bar("BlockDrop", "cl"), *(bar(HEURISTIC_NAMES[h], f"{h}_frozen") for h in HEURISTICS)]),
        (f"finetuned (γ = {results.penalty_key})",
         [bar("BlockDrop", ft), *(bar(HEURISTIC_NAMES[h], f"{h}_ft") for h in HEURISTICS)]),
        ("with and without the curriculum", [bar("curriculum", "cl"), bar("none", "nocl"),
                                             bar("curriculum,\nfinetuned", ft), bar("none,\nfinetuned", "ft_nocl")]),
    ]


def curve_arms(results: Results) -> tuple[dict[str, list[dict]], dict[str, int]]:
    """The learning curves' data: each arm's curves (as dicts) and handover epoch."""
    arms, handover = {}, {}
    for run, name in (("cl", "curriculum"), ("nocl", "no curriculum")):
        curves = [c for c in results.curves(run) if c is not None]
        arms[name] = [vars(c) for c in curves]
        handover[name] = curves[0].handover if curves else 0
    return arms, handover


def report_markdown(results: Results, assessments: list[Assessment], meta: dict) -> str:
    seeds = len(results.seeds)
    held = sum(a.verdict is Verdict.HOLDS for a in assessments)
    counts = ", ".join(f"{sum(a.verdict is v for a in assessments)} {v.value}" for v in Verdict
                       if any(a.verdict is v for a in assessments))
    return "\n\n".join([
        f"# The paper's claims on {results.model}",
        f"{held} of the {len(assessments)} claims hold on this data ({counts}). {meta['summary']} Every figure is "
        f"the mean ± the standard deviation over {seeds} seed{'s' * (seeds > 1)} "
        f"({', '.join(map(str, results.seeds))}) of the curriculum and finetuning, on one base ResNet for all seeds, "
        f"as in the paper; the test set has {results.test_images} images (one image is "
        f"{100 / results.test_images:.2f} points). A difference holds when it exceeds twice its standard error over "
        "the seeds and one test image.",
        claims_table(assessments, seeds),
        "## What each claim needs of the data\n\n" + needs_table(assessments),
        "## The paper's Table 1 beside ours\n\nAccuracy % / K (blocks kept), on the ResNet frozen after the "
        "curriculum → finetuned under that policy. The paper's K for the heuristics is BlockDrop's block count, "
        "rounded; ours too (the curriculum's for the frozen column, the finetuned model's at "
        f"γ = {results.penalty_key} for the other).\n\n" + table1(results),
        "![accuracy against FLOPs](figures/tradeoff.png)\n\n![the comparisons](figures/comparisons.png)",
        "## The curricula's learning curves\n\n![learning curves](figures/curves.png)\n\n" + plateau_table(results)
        + "\n\nA curriculum is *still rising* when, over the epochs after the handover, the mean training reward of "
          "the last fifth is above that of the fifth before by more than twice its standard error and 0.01.",
        "## Every model\n\n" + models_table(results),
        "## Settings\n\n" + meta["settings"],
        f"## Run\n\n`{meta['command']}` ran on {meta['machine']}: its steps took {meta['step_minutes']:.1f} minutes "
        f"when they ran, and this invocation {meta['minutes']:.1f} minutes (a finished step is skipped when the "
        "command is run again; each step is printed as the command that reproduces it).",
    ]) + "\n"
