"""The paper's claims, reproduced in one command: its baselines and ablations,
over several seeds, reported beside the paper's figures.

    python reproduce.py                                   (make reproduce: the digits, offline, on a CPU)
    python reproduce.py --model R110_C10 --data_dir data/ (the paper's CIFAR-10 schedules, on GPUs)
    python reproduce.py --model R110_C10 --plan           (what it would run, and a rough cost)

It trains the base ResNet and shallower ResNets of the same recipe
(``pretrain.py``); then for every seed the curriculum (``cl_training.py``), the
same epochs without a curriculum (``--cl_step K``: every block from the first
epoch), joint finetuning at every penalty (``finetune.py``), the ResNet
finetuned under FirstK and RandomK at BlockDrop's block count (``finetune.py
--policy``), and profiles each model (``test.py``), FirstK and RandomK on the
frozen base too. Every step is printed as the command that reproduces it. A
finished step is not run again when its settings and starting files are the
same; an interrupted one continues. ``claims.py`` judges the claims, and the
report goes to ``<out>/report.md``, ``report.json`` and ``figures/``.
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from claims import all_claims, claims_table, comparison_panels, report_markdown, trade_off
from engine import predict
from models import CONFIGS, build_agent, build_resnet, get_config
from utils.bases import choose_base, load_base
from utils.checkpoints import load_blockdrop
from utils.cli import (
    ArgumentParser,
    BlockDropError,
    add_device_flag,
    choose_device,
    finite_float,
    nonnegative_int,
    positive_int,
    run_cli,
)
from utils.data import get_datasets
from utils.distributed import setup, teardown
from utils.files import atomic_write_bytes, writable_folder, write_json
from utils.flops import agent_flops, resnet_flop_table
from utils.pipeline import cached, content_sha256, recorded_seconds, run_step, run_training
from utils.plots import claims_bars_figure, claims_tradeoff_figure, save_figure


@dataclass(frozen=True)
class Plan:
    """The experiments of one configuration: the schedules, penalties and seeds
    (the ones a user may change are flags of reproduce.py), and the shallower
    ResNets to compare with."""

    shallower: tuple[str, ...]
    base: tuple[str, ...]  # pretrain.py's flags for the base and the shallower ResNets
    base_epochs: int | None  # pretrain.py's --epochs (None: the configuration's base as it is)
    cl: tuple[str, ...]  # cl_training.py's flags
    cl_epochs: int  # --max_epochs
    cl_step: int
    ft: tuple[str, ...]  # finetune.py's flags, for BlockDrop and the finetuned baselines alike
    ft_epochs: int
    penalties: tuple[float, ...]
    penalty: float  # the finetuning penalty of claims 1b, 2, 4 and 5
    seeds: int
    workers: int
    train_images: int  # for the cost estimate of --plan
    test_images: int


WHY = {
    "R32_Digits": "the demo's schedule (the README says how it was chosen: the base trains at batch 64 to reach "
                  "98.9%, the curriculum hands 3 blocks per epoch, finetuning runs at lr 1e-3), with finetuning "
                  "cut from the demo's 13 epochs to 6 so that three seeds of the eight training runs each fit "
                  "30 minutes on a 2-core CPU (on this data the finetuning's training accuracy under sampled "
                  "policies passes 90% by its sixth epoch); alpha, beta, the reward and Adam are the paper's",
    "R32_C10": "the paper's schedules (SPEC sections 4 and 5, the authors' README): the curriculum at batch 2048 "
               "for 5000 epochs, finetuning at lr 1e-4 for 2000 epochs; three seeds",
    "R110_C10": "the paper's schedules (SPEC sections 4 and 5, the authors' README), its penalties, three seeds",
    "R101_ImgNet": "the paper's schedules (45 curriculum epochs, 10 finetuning epochs at γ = -5); one seed, for cost",
}
CIFAR_CL = ("--lr", "1e-3", "--penalty", "-1", "--batch_size", "2048")  # the authors' README
CIFAR_FT = ("--lr", "1e-4", "--epoch_step", "1600", "--batch_size", "256")
PLANS = {
    # the demo's settings (README "Results" says how they were chosen), three seeds: fits a 2-core CPU
    "R32_Digits": Plan(("R8_Digits", "R14_Digits", "R20_Digits", "R26_Digits"),
                       ("--milestones", "6", "9", "--batch_size", "64"), 12,
                       ("--lr", "1e-3", "--penalty", "-1", "--batch_size", "128"), 5, 3,
                       ("--lr", "1e-3", "--batch_size", "128"), 5, (-1.0, -5.0, -10.0), -5.0, 3, 0, 1437, 360),
    # the paper's Table 1 network, and its CIFAR-10 schedules (SPEC sections 4 and 5)
    "R32_C10": Plan(("R20_C10",), (), 164, CIFAR_CL, 5000, 1, CIFAR_FT, 2000, (-1.0, -5.0, -10.0), -10.0, 3, 4,
                    50000, 10000),
    "R110_C10": Plan(("R20_C10", "R32_C10", "R44_C10", "R56_C10"), (), 164, CIFAR_CL, 5000, 1, CIFAR_FT, 2000,
                     (-1.0, -2.0, -5.0, -10.0), -10.0, 3, 4, 50000, 10000),
    # ImageNet: torchvision's ResNet-101 and, the shallower one, ResNet-50, from the torch hub cache; one seed
    "R101_ImgNet": Plan(("R50_ImgNet",), (), None, ("--lr", "1e-3", "--penalty", "-1", "--batch_size", "2048"),
                        45, 1, ("--lr", "1e-4", "--batch_size", "320"), 10, (-5.0,), -5.0, 1, 8, 1281167, 50000),
}


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
    p.add_argument("--plan", action="store_true", help="print the runs and a rough cost, and run nothing")
    p.add_argument("--gpu_tflops", type=finite_float, default=20.0,
                   help="--plan: the effective training speed assumed, in TFLOP/s")
    return p


def plan_of(args: argparse.Namespace) -> Plan:
    """The configuration's plan with the flags given applied, checked before any work."""
    plan = PLANS[args.model]
    changes = {k: v for k, v in {"seeds": args.seeds, "base_epochs": args.base_epochs, "cl_epochs": args.cl_epochs,
                                  "ft_epochs": args.ft_epochs, "workers": args.workers}.items() if v is not None}
    if args.penalties:
        changes["penalties"] = tuple(args.penalties)
    if args.shallower is not None:
        unknown = [name for name in args.shallower if name not in CONFIGS]
        if unknown:
            raise BlockDropError(f"--shallower {unknown[0]}: not a configuration; choose from {', '.join(CONFIGS)}")
        changes["shallower"] = tuple(args.shallower)
    plan = replace(plan, **changes)
    penalty = plan.penalty if args.penalty is None else args.penalty
    if penalty not in plan.penalties:
        raise BlockDropError(f"--penalty {penalty:g} is not one of --penalties {' '.join(f'{p:g}' for p in plan.penalties)}")
    if len({f"{p:g}" for p in plan.penalties}) != len(plan.penalties):
        raise BlockDropError(f"--penalties {' '.join(f'{p:g}' for p in plan.penalties)}: two of them are the same "
                             "to six digits and would share a folder; give each once")
    if args.base and not Path(args.base).is_file():
        raise BlockDropError(f"--base {args.base}: no such file")
    return replace(plan, penalty=penalty)


# --------------------------------------------------------------------------
# the steps
# --------------------------------------------------------------------------
class Steps:
    """The plan's steps, each run once in its own folder under ``out`` (see
    ``utils.pipeline``), and printed as the command that reproduces it."""

    def __init__(self, args: argparse.Namespace, plan: Plan, out: Path):
        self.args, self.plan, self.out, self.model = args, plan, out, args.model
        self.common = ["--data_dir", args.data_dir, "--workers", str(plan.workers)]
        self.common += ["--device", args.device] if args.device else []

    def base(self, model: str, seed: int) -> str:
        """A base ResNet trained by pretrain.py with the plan's recipe, or, for a
        plan without one, the configuration's own (torchvision's, for ImageNet)."""
        if self.plan.base_epochs is None:
            return str(choose_base(get_config(model), None))
        folder = self.out / "bases" / f"{model}_seed_{seed}"
        argv = ["--model", model, *self.common, *self.plan.base, "--epochs", str(self.plan.base_epochs),
                "--seed", str(seed), "--cv_dir", str(folder)]
        return run_training(folder, "pretrain.py", argv, {"argv": argv})["path"]

    def profile(self, record: Path, model: str, flags: list[str], starts: dict) -> dict:
        """test.py's figures (accuracy, blocks, FLOPs, unique policies), kept in ``record``."""
        argv = ["--model", model, *self.common, *flags, "--batch_size", "128", "--time_images", "0",
                "--json", str(record.with_name(record.stem + "_test.json"))]
        return cached(record, {"argv": argv, **starts}, lambda: run_step("test.py", argv))

    def train(self, folder: Path, script: str, flags: list[str], starts: dict) -> dict:
        """A training run of the deep configuration, and its last checkpoint's profile."""
        argv = ["--model", self.model, *self.common, *flags, "--cv_dir", str(folder)]
        trained = run_training(folder, script, argv, {"argv": argv, **starts})
        ckpt = trained["checkpoint"]
        profiled = self.profile(folder / "profile.json", self.model, ["--load", ckpt],
                                {"checkpoint_sha256": content_sha256(ckpt)})
        return {**profiled, "reward": trained["reward"], "checkpoint": ckpt}


def seed_runs(steps: Steps, seed: int, base: str) -> dict:
    """Every run of one seed: the curriculum with and without, finetuning at
    every penalty, and the baselines at BlockDrop's block count, frozen and finetuned."""
    plan, folder = steps.plan, steps.out / f"seed_{seed}"
    starts = {"base_sha256": content_sha256(base)}
    seeded = ["--seed", str(seed), "--base", base]
    cl = [*seeded, *plan.cl, "--max_epochs", str(plan.cl_epochs), "--test_every", str(max(1, plan.cl_epochs))]
    ft = [*seeded, *plan.ft, "--max_epochs", str(plan.ft_epochs), "--test_every", str(max(1, plan.ft_epochs))]
    runs = {"cl": steps.train(folder / "cl", "cl_training.py", [*cl, "--cl_step", str(plan.cl_step)], starts),
            "nocl": steps.train(folder / "nocl", "cl_training.py",
                                [*cl, "--cl_step", str(get_config(steps.model).num_blocks)], starts)}
    runs["k_frozen"] = round(runs["cl"]["block_usage"])
    for policy in ("firstk", "randomk"):
        runs[f"{policy}_frozen"] = steps.profile(
            folder / f"{policy}_frozen.json", steps.model,
            ["--base", base, "--policy", policy, "--k", str(runs["k_frozen"]), "--seed", str(seed)], starts)

    def finetuned(name: str, penalty: float, flags: list[str], start: str | None) -> dict:
        return steps.train(folder / name, "finetune.py", [*ft, "--penalty", f"{penalty:g}", *flags],
                           {**starts, "pretrained_sha256": content_sha256(start)})

    runs["ft"] = {f"{p:g}": finetuned(f"ft_{p:g}", p, ["--pretrained", runs["cl"]["checkpoint"]],
                                      runs["cl"]["checkpoint"]) for p in plan.penalties}
    runs["k_ft"] = round(runs["ft"][f"{plan.penalty:g}"]["block_usage"])
    for policy in ("firstk", "randomk"):
        runs[f"{policy}_ft"] = finetuned(f"{policy}_ft", plan.penalty, ["--policy", policy, "--k", str(runs["k_ft"])],
                                         None)
    runs["ft_nocl"] = finetuned("ft_nocl", plan.penalty, ["--pretrained", runs["nocl"]["checkpoint"]],
                                runs["nocl"]["checkpoint"])
    chosen = runs["ft"][f"{plan.penalty:g}"]["checkpoint"]
    runs["instance"] = cached(folder / "instance.json", {"checkpoint_sha256": content_sha256(chosen), **starts},
                              lambda: easy_and_hard(steps, chosen, base))
    return runs


def easy_and_hard(steps: Steps, checkpoint: str, base: str) -> dict:
    """Blocks used by the half of the test images that the base ResNet is most
    sure of (the easy half, by its top softmax probability) and by the other half."""
    config = get_config(steps.model)
    device = choose_device(steps.args.device)
    model = load_blockdrop(checkpoint, steps.model, device=device)
    full = build_resnet(config)
    load_base(full, Path(base), config.name)
    _, testset = get_datasets(config, steps.args.data_dir)
    loader = DataLoader(testset, batch_size=256, shuffle=False)
    used = predict(model, loader, device, desc="policies")["policies"].sum(1)
    with torch.no_grad():
        full = full.to(device).eval()
        confidence = torch.cat([full(x.to(device)).softmax(1).max(1).values.cpu() for x, _ in loader])
    easy = torch.zeros(len(confidence), dtype=torch.bool)
    easy[confidence.argsort(descending=True, stable=True)[: len(confidence) // 2]] = True  # two halves, ties by order
    print(f"easy half: {used[easy].mean():.2f} blocks; hard half: {used[~easy].mean():.2f} blocks", flush=True)
    return {"easy_blocks": used[easy].mean().item(), "hard_blocks": used[~easy].mean().item(),
            "easy_images": int(easy.sum()), "hard_images": int((~easy).sum())}


# --------------------------------------------------------------------------
# the whole plan
# --------------------------------------------------------------------------
def default_out(model: str) -> Path:
    return Path("cv/reproduce") if model == "R32_Digits" else Path(f"cv/reproduce_{model}")


def run_plan(args: argparse.Namespace, plan: Plan, out: Path) -> dict:
    """Every step of the plan; returns the results that ``claims.py`` reads."""
    steps = Steps(args, plan, out)
    seeds = list(range(plan.seeds))
    base = args.base or steps.base(args.model, 0)  # one base for every seed, as in the paper
    full = steps.profile(out / "full.json", args.model, ["--base", base], {"base_sha256": content_sha256(base)})
    shallow = {}
    for name in plan.shallower:  # trained once, as the base is: the seeds vary the curriculum and finetuning
        path = steps.base(name, 0)
        shallow[name] = [steps.profile(out / "bases" / f"{name}_seed_0.json", name, ["--base", path],
                                       {"base_sha256": content_sha256(path)})]
    runs = {seed: seed_runs(steps, seed, base) for seed in seeds}
    return {"model": args.model, "base": base, "test_images": full["images"], "seeds": seeds,
            "penalty": plan.penalty, "penalty_key": f"{plan.penalty:g}",
            "penalty_keys": [f"{p:g}" for p in plan.penalties], "full": full, "shallow": shallow, "runs": runs}


def cost(args: argparse.Namespace, plan: Plan) -> list[tuple[str, float]]:
    """Training and profiling FLOPs of each kind of step (forward and backward
    counted as three forward passes), for --plan's estimate."""
    def flops(name: str, agent: bool = False) -> float:
        config = get_config(name)
        with torch.device("meta"):  # shapes only
            if agent:
                return agent_flops(build_agent(config), config.input_size)
            always, blocks = resnet_flop_table(build_resnet(config), config.input_size)
        return always + sum(blocks)

    resnet, agent = flops(args.model), flops(args.model, agent=True)
    n, seeds = plan.train_images, plan.seeds
    rows = [(f"curriculum, with and without ({plan.cl_epochs + 1} epochs each)",
             2 * seeds * (plan.cl_epochs + 1) * n * (3 * agent + 2 * resnet)),
            (f"finetuning: {len(plan.penalties)} penalties, without curriculum, FirstK, RandomK "
             f"({plan.ft_epochs + 1} epochs each)",
             seeds * (plan.ft_epochs + 1) * n * ((len(plan.penalties) + 1) * (3 * agent + 4 * resnet) + 2 * 3 * resnet))]
    if plan.base_epochs is not None:
        rows.insert(0, (f"base and shallower ResNets ({plan.base_epochs} epochs each)",
                        plan.base_epochs * n * 3 * (resnet + sum(flops(name) for name in plan.shallower))))
    return rows


def plan_text(args: argparse.Namespace, plan: Plan) -> str:
    rows = cost(args, plan)
    total = sum(f for _, f in rows)
    lines = [f"{args.model}: {plan.seeds} seed(s), penalties {', '.join(f'{p:g}' for p in plan.penalties)} "
             f"(the claims at {plan.penalty:g}), shallower ResNets: {', '.join(plan.shallower) or 'none'}"]
    lines += [f"  {what}: {flops:.2E} FLOPs" for what, flops in rows]
    lines.append(f"  in all {total:.2E} FLOPs: about {total / (args.gpu_tflops * 1e12) / 3600:.1f} GPU-hours at an "
                 f"effective {args.gpu_tflops:g} TFLOP/s (a rough figure: small networks reach a fraction of a "
                 "GPU's peak; data loading and evaluation come on top)")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> dict:
    plan = plan_of(args)
    out = Path(args.out) if args.out else default_out(args.model)
    if args.plan:
        print(plan_text(args, plan))
        return {}
    writable_folder(out, "--out")
    started = time.time()
    procs = setup(args.device)  # under torchrun, one process group for every step
    try:
        results = run_plan(args, plan, out)
    finally:
        teardown(procs)
    if not procs.is_main:
        return results
    claims = all_claims(results)
    meta = {"minutes": (time.time() - started) / 60, "step_minutes": recorded_seconds(out) / 60,
            "plan": dict(vars(plan)), "machine": machine(args),
            "command": " ".join(["python reproduce.py", *_given_flags(args)]),
            "summary": f"BlockDrop on {args.model} ({get_config(args.model).num_blocks} blocks), its baselines and "
                       "ablations, run by this project's scripts.", "settings": settings_text(args, plan)}
    report = write_report(out, results, claims, meta)
    print(f"\n{report['table']}\n\nwritten: {out / 'report.md'}, {out / 'report.json'}, figures in {out / 'figures'}/ "
          f"({meta['minutes']:.1f} minutes)")
    return {**results, "claims": [vars(c) for c in claims], **meta}


def write_report(out: Path, results: dict, claims: list, meta: dict) -> dict:
    """``report.md`` (the claims' table, figures, every model, the settings),
    ``report.json`` (everything) and the two figures under ``figures/``."""
    seeds = len(results["seeds"])
    points = trade_off(results)
    full = {"flops": results["full"]["resnet_flops"], "accuracy": results["full"]["accuracy"]}
    save_figure(claims_tradeoff_figure(points, full, f"{results['model']}: accuracy against FLOPs "
                                                     f"(mean ± std over {seeds} seed{'s' * (seeds > 1)})"),
                out / "figures" / "tradeoff.png")
    save_figure(claims_bars_figure(comparison_panels(results), f"{results['model']}: learned against heuristic "
                                                               "policies, and the curriculum's effect"),
                out / "figures" / "comparisons.png")
    atomic_write_bytes(out / "report.md", report_markdown(results, claims, meta).encode())
    write_json(out / "report.json", {**results, "claims": [vars(c) for c in claims], "trade_off": points, **meta})
    return {"table": claims_table(claims, seeds)}


def settings_text(args: argparse.Namespace, plan: Plan) -> str:
    """The plan's settings in words, and why they were chosen."""
    base = (f"`pretrain.py {' '.join(plan.base)} --epochs {plan.base_epochs}`" if plan.base_epochs is not None
            else "the configuration's own weights")
    lines = [f"- base ResNet and shallower ResNets ({', '.join(plan.shallower) or 'none'}): {base}"
             + (f" (here: `--base {args.base}`)" if args.base else ""),
             f"- curriculum: `cl_training.py {' '.join(plan.cl)} --max_epochs {plan.cl_epochs} --cl_step "
             f"{plan.cl_step}`; without it: `--cl_step {get_config(args.model).num_blocks}` (every block from "
             "the first epoch, the same epochs)",
             f"- finetuning: `finetune.py {' '.join(plan.ft)} --max_epochs {plan.ft_epochs}` at penalties "
             f"{', '.join(f'{p:g}' for p in plan.penalties)}; FirstK and RandomK finetuned with the same flags "
             f"(`--policy firstk|randomk --k K`) at BlockDrop's mean block count at γ = {plan.penalty:g}, rounded",
             f"- seeds {', '.join(str(s) for s in range(plan.seeds))}: the curriculum, finetuning and RandomK's draws; "
             "the deep base and each shallower ResNet are trained once (seed 0), as the paper trains one base",
             f"- why: {WHY[args.model]}"]
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
