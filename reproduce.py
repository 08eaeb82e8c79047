"""The paper's claims, reproduced in one command: its baselines and ablations,
over several seeds, reported beside the paper's figures.

    python reproduce.py                                   (make reproduce: the digits, offline, on a CPU)
    python reproduce.py --model R110_C10 --data_dir data/ (the paper's CIFAR-10 schedules, on GPUs)
    python reproduce.py --model R110_C10 --plan           (what it would run, and a rough cost)

The runs are declared as data (``experiment.declare``): the base ResNet and
shallower ResNets of the same recipe (``pretrain.py``); for every seed the
curriculum (``cl_training.py``), the same epochs without one (``--cl_step
K``), joint finetuning at every penalty and from the curriculum-free policy
(``finetune.py``), FirstK, RandomK and DistributeK at BlockDrop's block count
on the frozen ResNet (``test.py``) and finetuned (``finetune.py --policy``),
and the easy and hard test images. Each run is printed as the command that
reproduces it; a finished one is not run again when its settings and the
files it starts from are the same, and an interrupted one continues. The
outcomes go into ``experiment.Results``, ``claims.py`` judges them and
``report.py`` writes ``<out>/report.md``, ``report.json`` and ``figures/``.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from claims import all_claims
from evaluation import predict
from experiment import (
    GPU_PLANS,
    PLANS,
    Curve,
    Outcome,
    Plan,
    PlannedRun,
    Profile,
    Ref,
    Results,
    check_distinct_penalties,
    declare,
    flag_value,
    plan_for,
    with_flags,
)
from models import CONFIGS, build_agent, build_resnet, get_config
from report import claims_table, comparison_panels, curve_arms, report_markdown, trade_off
from rl import decided_blocks
from utils.bases import choose_base, load_base
from utils.checkpoints import load_blockdrop, policy_source
from utils.cli import ArgumentParser, add_device_flag, finite_float, nonnegative_int, positive_int, run_cli
from utils.data import get_datasets
from utils.distributed import choose_device, is_main_process, setup, teardown
from utils.errors import BlockDropError
from utils.files import atomic_write_bytes, writable_folder, write_json
from utils.flops import agent_flops, resnet_flop_table
from utils.pipeline import cached, content_sha256, recorded_seconds, run_script, run_training


def get_args_parser() -> ArgumentParser:
    p = ArgumentParser(prog="reproduce.py", description="the paper's claims: baselines, ablations, several seeds")
    p.add_argument("--model", default="R32_Digits", choices=list(PLANS), metavar="MODEL",
                   help=f"the deep ResNet BlockDrop runs on, one of: {', '.join(PLANS)}")
    p.add_argument("--data_dir", default="data/", help="data set folder (unused by the digits)")
    p.add_argument("--out", default=None,
                   help="output folder (default: cv/reproduce/ for the digits, cv/reproduce_<model>/ otherwise)")
    p.add_argument("--seeds", type=positive_int, default=None,
                   help="seeds 0..N-1 of the curriculum, finetuning and RandomK's draws; the base and the shallower "
                        "ResNets are trained once, with seed 0 (default: per configuration)")
    p.add_argument("--penalties", type=finite_float, nargs="+", default=None,
                   help="finetuning penalties of the trade-off (default: per configuration)")
    p.add_argument("--penalty", type=finite_float, default=None,
                   help="the penalty of the other claims, one of --penalties (default: per configuration)")
    p.add_argument("--base_epochs", type=positive_int, default=None, help="pretrain.py's --epochs")
    p.add_argument("--cl_epochs", type=nonnegative_int, default=None, help="cl_training.py's --max_epochs")
    p.add_argument("--ft_epochs", type=nonnegative_int, default=None, help="finetune.py's --max_epochs")
    p.add_argument("--shallower", nargs="*", default=None, metavar="MODEL",
                   help="the shallower ResNets to train and compare with (default: per configuration)")
    p.add_argument("--base", default=None, help="a base ResNet to start from instead of training one")
    add_device_flag(p)
    p.add_argument("--workers", type=nonnegative_int, default=None, help="data loader workers")
    p.add_argument("--hardware", choices=("cpu", "gpu"), default=None,
                   help=f"the plan sized for a 2-core CPU or for one GPU, where a configuration has both "
                        f"({', '.join(GPU_PLANS)}; default: gpu when the device is CUDA, else cpu)")
    p.add_argument("--plan", action="store_true", help="print the runs and a rough cost, and run nothing")
    p.add_argument("--gpu_tflops", type=finite_float, default=20.0,
                   help="--plan: the effective training speed assumed, in TFLOP/s")
    return p


def plan_of(args: argparse.Namespace) -> Plan:
    """The configuration's plan with the flags given applied, checked before any work."""
    if args.shallower is not None:
        unknown = [name for name in args.shallower if name not in CONFIGS]
        if unknown:
            raise BlockDropError(f"--shallower {unknown[0]}: not a configuration; choose from {', '.join(CONFIGS)}")
    if args.hardware is None:
        args.hardware = "gpu" if choose_device(args.device).type == "cuda" else "cpu"
    plan = with_flags(plan_for(args.model, args.hardware), seeds=args.seeds, base_epochs=args.base_epochs, cl_epochs=args.cl_epochs,
                      ft_epochs=args.ft_epochs, workers=args.workers, penalty=args.penalty,
                      penalties=tuple(args.penalties) if args.penalties else None,
                      shallower=tuple(args.shallower) if args.shallower is not None else None)
    listed = " ".join(f"{p:g}" for p in plan.penalties)
    if plan.penalty not in plan.penalties:
        raise BlockDropError(f"--penalty {plan.penalty:g} is not one of --penalties {listed}")
    check_distinct_penalties(plan.penalties)
    if args.base and not Path(args.base).is_file():
        raise BlockDropError(f"--base {args.base}: no such file")
    return plan


# --------------------------------------------------------------------------
# making the runs
# --------------------------------------------------------------------------
class Executor:
    """Makes each planned run once in its own folder under ``out`` (see
    ``utils.pipeline``), printed as the command that reproduces it, and keeps
    its outcome in ``results``."""

    def __init__(self, args: argparse.Namespace, out: Path, results: Results, workers: int):
        self.args, self.out, self.results = args, out, results
        self.common = ["--data_dir", args.data_dir, "--workers", str(workers)]
        self.common += ["--device", args.device] if args.device else []

    def resolve(self, run: PlannedRun) -> tuple[list[str], dict] | str:
        """The run's flags with every Ref replaced by its value, and the SHA-256
        of the files it starts from; or why it cannot be made."""
        argv, starts = [], {}
        for flag in run.flags:
            if isinstance(flag, Ref):
                value = getattr(self.results.get(flag.run), flag.field)
                if value is None:
                    return f"{flag.run} gave no {flag.field} ({self.results.get(flag.run).note or 'not measured'})"
                if flag.field == "path":
                    starts[f"{flag.run}_sha256"] = content_sha256(value)
                flag = value
            argv.append(str(flag))
        if "--policy" in argv and "--k" in argv:
            try:  # a K that the heuristic cannot keep (DistributeK under one block per stage)
                policy_source(get_config(run.model), argv[argv.index("--policy") + 1], int(argv[argv.index("--k") + 1]))
            except BlockDropError as exc:
                return str(exc)
        return argv, starts

    def make(self, run: PlannedRun) -> Outcome:
        if run.script == "given":
            return Outcome(path=str(run.flags[0] or choose_base(get_config(run.model), None)))
        resolved = self.resolve(run)
        if isinstance(resolved, str):
            print(f"\n# {run.name}: not run: {resolved}", flush=True)
            return Outcome(note=resolved)
        argv, starts = resolved
        if run.script == "test.py":
            return outcome_of(self.run_test_script(self.out / f"{run.name}.json", run.model, argv, starts))
        if run.script == "easy_hard":
            return Outcome(**cached(self.out / f"{run.name}.json", {"argv": argv, **starts},
                                    lambda: easy_and_hard(self.args, run.model, argv[1], argv[3])))
        folder = self.out / run.name
        argv = ["--model", run.model, *self.common, *argv, "--cv_dir", str(folder)]
        trained = run_training(folder, run.script, argv, {"argv": argv, **starts})
        if run.script == "pretrain.py":
            return Outcome(path=trained["path"])
        outcome = outcome_of(self.run_test_script(folder / "profile.json", run.model, ["--load", trained["checkpoint"]],
                                        {"checkpoint_sha256": content_sha256(trained["checkpoint"])}))
        outcome.reward, outcome.path = trained["reward"], trained["checkpoint"]
        outcome.curve = learning_curve(folder, run, get_config(run.model).num_blocks)
        return outcome

    def run_test_script(self, record: Path, model: str, flags: list[str], starts: dict) -> dict:
        """test.py's metrics (accuracy, blocks, FLOPs, unique policies), kept in ``record``."""
        argv = ["--model", model, *self.common, *flags, "--batch_size", "128", "--time_images", "0",
                "--json", str(record.with_name(record.stem + "_test.json"))]
        return cached(record, {"argv": argv, **starts}, lambda: run_script("test.py", argv))


def outcome_of(metrics: dict) -> Outcome:
    """A profiled model's outcome: test.py's metrics, and its blocks rounded (the heuristics' K)."""
    profile = Profile.of(metrics)
    return Outcome(profile=profile, k=max(1, round(profile.block_usage)))


def learning_curve(folder: Path, run: PlannedRun, num_blocks: int) -> Curve:
    """The run's training metrics by epoch, from its ``metrics.jsonl``."""
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("split") == "train"]
    cl_step = int(flag_value(run.flags, "cl_step") or num_blocks)
    handover = next(e for e in range(num_blocks + 1) if decided_blocks(e, num_blocks, cl_step) >= num_blocks)
    return Curve([r["epoch"] for r in rows], [r["reward"] for r in rows], [r["acc"] for r in rows],
                 [r["blocks"] for r in rows], handover if run.script == "cl_training.py" else 0)


def easy_and_hard(args: argparse.Namespace, model_name: str, checkpoint: str, base: str) -> dict:
    """Blocks used by the half of the test images that the base ResNet is most
    sure of (the easy half, by its top softmax probability) and by the other
    half, and the base's accuracy on each half."""
    config = get_config(model_name)
    device = choose_device(args.device)
    model = load_blockdrop(checkpoint, model_name, device=device)
    full = build_resnet(config)
    load_base(full, Path(base), config.name)
    _, testset = get_datasets(config, args.data_dir)
    loader = DataLoader(testset, batch_size=256, shuffle=False)
    used = predict(model, loader, device, desc="policies")["policies"].sum(1)
    with torch.no_grad():
        full = full.to(device).eval()
        logits = torch.cat([full(x.to(device)).cpu() for x, _ in loader])
    correct = logits.argmax(1) == torch.cat([y for _, y in loader])
    easy = torch.zeros(len(logits), dtype=torch.bool)
    confidence = logits.softmax(1).max(1).values
    easy[confidence.argsort(descending=True, stable=True)[: len(logits) // 2]] = True  # two halves, ties by order
    print(f"easy half: {used[easy].mean():.2f} blocks; hard half: {used[~easy].mean():.2f} blocks", flush=True)
    return {"easy_blocks": used[easy].mean().item(), "hard_blocks": used[~easy].mean().item(),
            "easy_accuracy": correct[easy].double().mean().item(),
            "hard_accuracy": correct[~easy].double().mean().item()}


def default_out(model: str, hardware: str = "cpu") -> Path:
    if model == "R32_Digits":
        return Path("cv/reproduce")
    return Path(f"cv/reproduce_{model}" + ("_gpu" if hardware == "gpu" and model in GPU_PLANS else ""))


def execute(args: argparse.Namespace, plan: Plan, out: Path) -> Results:
    """Every run of the plan, in order; their outcomes."""
    config = get_config(args.model)
    results = Results(args.model, config.num_blocks, 0, list(range(plan.seeds)), list(plan.penalties), plan.penalty)
    executor = Executor(args, out, results, plan.workers)
    for run in declare(plan, args.model, args.base):
        results.outcomes[run.name] = executor.make(run)
    results.test_images = results.get("full").profile.images
    return results


# --------------------------------------------------------------------------
# the cost of a plan
# --------------------------------------------------------------------------
@functools.cache
def _flops(name: str, agent: bool = False) -> float:
    """One forward pass of a configuration's ResNet (or its policy network), in FLOPs."""
    config = get_config(name)
    with torch.device("meta"):  # shapes only
        if agent:
            return agent_flops(build_agent(config), config.input_size)
        always, blocks = resnet_flop_table(build_resnet(config), config.input_size)
    return always + sum(blocks)


RUN_START_SECONDS = 5  # --plan: a process's start on a GPU (CUDA, the data set, the networks)


def run_cost(run: PlannedRun, plan: Plan) -> float:
    """A run's FLOPs: training counts forward and backward as three forward
    passes; the curriculum runs the frozen ResNet twice, finetuning three
    times (the sampled pass trains) and a heuristic's finetuning once."""
    resnet, agent = _flops(run.model), _flops(run.model, agent=True)
    if run.script == "pretrain.py":
        return int(flag_value(run.flags, "epochs")) * plan.train_images * 3 * resnet
    if run.script in ("test.py", "easy_hard"):
        return plan.test_images * (agent + resnet)
    per_image = 3 * agent + (2 * resnet if run.script == "cl_training.py" else 4 * resnet)
    if flag_value(run.flags, "policy") is not None:
        per_image = 3 * resnet
    return (int(flag_value(run.flags, "max_epochs")) + 1) * plan.train_images * per_image


def plan_text(args: argparse.Namespace, plan: Plan) -> str:
    runs = declare(plan, args.model, args.base)
    by_script: dict[str, list[float]] = {}
    for run in runs:
        if run.script != "given":
            by_script.setdefault(run.script, []).append(run_cost(run, plan))
    total = sum(sum(v) for v in by_script.values())
    lines = [f"{args.model}: {plan.seeds} seed(s), penalties {', '.join(f'{p:g}' for p in plan.penalties)} "
             f"(the claims at {plan.penalty:g}), shallower ResNets: {', '.join(plan.shallower) or 'none'}; "
             f"{len(runs)} runs"]
    lines += [f"  {script}: {len(costs)} runs, {sum(costs):.2E} FLOPs" for script, costs in by_script.items()]
    started = sum(n for n in map(len, by_script.values()))
    hours = (total / (args.gpu_tflops * 1e12) + started * RUN_START_SECONDS) / 3600
    cost = f"{hours:.1f} GPU-hours" if hours >= 1 else f"{60 * hours:.1f} GPU-minutes"
    lines.append(f"  in all {total:.2E} FLOPs: about {cost} at an effective {args.gpu_tflops:g} TFLOP/s and "
                 f"{RUN_START_SECONDS} s to start each of the {started} runs (a rough figure: small networks reach a "
                 "fraction of a GPU's peak)")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------
def main(args: argparse.Namespace) -> dict:
    plan = plan_of(args)
    out = Path(args.out) if args.out else default_out(args.model, args.hardware)
    if args.plan:
        print(plan_text(args, plan))
        return {}
    choose_device(args.device)  # a device that is not there is refused before anything is written
    writable_folder(out, "--out")
    started = time.time()
    procs = setup(args.device)  # under torchrun, one process group for every run
    try:
        results = execute(args, plan, out)
    finally:
        teardown(procs)
    if not is_main_process():
        return results.to_json()
    assessments = all_claims(results)
    meta = {"minutes": (time.time() - started) / 60, "step_minutes": recorded_seconds(out) / 60,
            "machine": machine(args), "command": " ".join(["python reproduce.py", *_given_flags(args)]),
            "summary": f"BlockDrop on {args.model} ({get_config(args.model).num_blocks} blocks), its baselines and "
                       "ablations, run by this project's scripts.", "settings": settings_text(args, plan)}
    table = write_report(out, results, assessments, meta)
    print(f"\n{table}\n\nwritten: {out / 'report.md'}, {out / 'report.json'}, figures in {out / 'figures'}/ "
          f"({meta['minutes']:.1f} minutes)")
    return {"results": results.to_json(), "claims": [_as_json(a) for a in assessments], **meta}


def _as_json(assessment) -> dict:
    return {**vars(assessment), "verdict": assessment.verdict.value}


def write_report(out: Path, results: Results, assessments: list, meta: dict) -> str:
    """``report.md``, ``report.json`` (results, claims, settings) and the figures under ``figures/``."""
    from utils.plots import claims_bars_figure, claims_tradeoff_figure, learning_curves_figure, save_figure

    seeds = len(results.seeds)
    full = {"flops": results.value("full", "resnet_flops"), "accuracy": results.value("full", "accuracy")}
    save_figure(claims_tradeoff_figure(trade_off(results), full, f"{results.model}: accuracy against FLOPs "
                                                                 f"(mean ± std over {seeds} seed{'s' * (seeds > 1)})"),
                out / "figures" / "tradeoff.png")
    save_figure(claims_bars_figure(comparison_panels(results), f"{results.model}: learned against heuristic "
                                                               "policies, and the curriculum's effect"),
                out / "figures" / "comparisons.png")
    save_figure(learning_curves_figure(*curve_arms(results)), out / "figures" / "curves.png")
    atomic_write_bytes(out / "report.md", report_markdown(results, assessments, meta).encode())
    write_json(out / "report.json", {"results": results.to_json(), "claims": [_as_json(a) for a in assessments],
                                     **meta})
    return claims_table(assessments, seeds)


def settings_text(args: argparse.Namespace, plan: Plan) -> str:
    """The plan's settings in words, and why they were chosen."""
    base = (f"`pretrain.py {' '.join(plan.pretrain_flags)} --epochs {plan.base_epochs}`"
            if plan.base_epochs is not None else "the configuration's own weights")
    k = get_config(args.model).num_blocks
    lines = [f"- base ResNet and shallower ResNets ({', '.join(plan.shallower) or 'none'}): {base}"
             + (f" (here: `--base {args.base}`)" if args.base else ""),
             f"- curriculum: `cl_training.py {' '.join(plan.cl_flags)} --max_epochs {plan.cl_epochs} --cl_step "
             f"{plan.cl_step}`; without it: `--cl_step {k}` (every block from the first epoch, the same epochs)",
             f"- finetuning: `finetune.py {' '.join(plan.ft_flags)} --max_epochs {plan.ft_epochs}` at penalties "
             f"{', '.join(f'{p:g}' for p in plan.penalties)}; FirstK, RandomK and DistributeK finetuned with the "
             f"same flags (`--policy firstk|randomk|distributek --k K`) at BlockDrop's mean block count at "
             f"γ = {plan.penalty:g}, rounded",
             f"- seeds {', '.join(str(s) for s in range(plan.seeds))}: the curriculum, finetuning and RandomK's draws; "
             "the deep base and each shallower ResNet are trained once (seed 0), as the paper trains one base",
             f"- why: {plan.why}"]
    return "\n".join(lines)


def machine(args: argparse.Namespace) -> str:
    device = choose_device(args.device)
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    return f"{what}; Python {platform.python_version()}, PyTorch {torch.__version__}"


def _given_flags(args: argparse.Namespace) -> list[str]:
    return [f"--{k} {getattr(args, k)}" for k in sorted(getattr(args, "_given", ()))]


if __name__ == "__main__":
    run_cli(main, get_args_parser())
