"""The whole BlockDrop pipeline on real images, offline, on a CPU, in minutes.

    python demo.py            (or: make demo)

On ``R32_Digits`` (scikit-learn's handwritten digits at 32x32):
pretrain.py -> cl_training.py -> finetune.py -> test.py (full ResNet and
BlockDrop) -> visualize.py, plus a small penalty sweep for the trade-off curve.
Each step is printed as the command that reproduces it, and the run ends with
a table of the full ResNet-32 against BlockDrop. Everything goes under ``--out``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from experiment import PLANS
from utils.cli import (
    ArgumentParser,
    add_device_flag,
    add_model_flag,
    finite_float,
    nonnegative_int,
    positive_float,
    positive_int,
    run_cli,
)
from utils.files import set_aside, writable_folder, write_json
from utils.pipeline import run_script

# The settings of the demo: the digits plan of the reproduction (the base's
# recipe, finetuning's learning rate, batch and penalties: experiment.PLANS),
# with a curriculum and finetuning short enough for minutes on a CPU; README
# "Results" says how they were chosen.
PLAN = PLANS["R32_Digits"]
DEFAULTS = {
    "base_epochs": PLAN.base_epochs, "base_milestones": [int(m) for m in PLAN.values("pretrain", "milestones")],
    "base_batch_size": int(PLAN.flag("pretrain", "batch_size")),
    "cl_epochs": 5, "cl_step": 3, "cl_lr": float(PLAN.flag("cl", "lr")), "cl_penalty": float(PLAN.flag("cl", "penalty")),
    "ft_epochs": 12, "ft_lr": float(PLAN.flag("ft", "lr")), "penalty": PLAN.penalty,
    "batch_size": int(PLAN.flag("ft", "batch_size")),
    "sweep_penalties": [p for p in PLAN.penalties if p != PLAN.penalty],
}


def get_args_parser() -> ArgumentParser:
    p = ArgumentParser(prog="demo.py", description="BlockDrop end to end on the digits, offline")
    add_model_flag(p, "R32_Digits")
    p.add_argument("--data_dir", default="data/", help="data set folder (unused by the digits)")
    p.add_argument("--out", default="cv/demo/", help="output folder")
    p.add_argument("--base_epochs", type=positive_int, default=DEFAULTS["base_epochs"], help="pretraining epochs")
    p.add_argument("--base_milestones", type=positive_int, nargs="*", default=DEFAULTS["base_milestones"],
                   help="pretraining epochs where the lr drops 10x")
    p.add_argument("--base_batch_size", type=positive_int, default=DEFAULTS["base_batch_size"],
                   help="pretraining batch size")
    p.add_argument("--cl_epochs", type=nonnegative_int, default=DEFAULTS["cl_epochs"],
                   help="curriculum epochs after the first")
    p.add_argument("--cl_step", type=positive_int, default=DEFAULTS["cl_step"],
                   help="curriculum: blocks handed to the policy per epoch")
    p.add_argument("--cl_lr", type=positive_float, default=DEFAULTS["cl_lr"], help="curriculum learning rate")
    p.add_argument("--cl_penalty", type=finite_float, default=DEFAULTS["cl_penalty"], help="curriculum penalty")
    p.add_argument("--ft_epochs", type=nonnegative_int, default=DEFAULTS["ft_epochs"],
                   help="finetuning epochs after the first")
    p.add_argument("--ft_lr", type=positive_float, default=DEFAULTS["ft_lr"], help="finetuning learning rate")
    p.add_argument("--penalty", type=finite_float, default=DEFAULTS["penalty"], help="finetuning penalty (gamma)")
    p.add_argument("--batch_size", type=positive_int, default=DEFAULTS["batch_size"],
                   help="batch size of curriculum learning and finetuning")
    p.add_argument("--sweep_penalties", type=finite_float, nargs="*", default=DEFAULTS["sweep_penalties"],
                   help="further penalties for the trade-off curve (none: no sweep)")
    add_device_flag(p)
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--workers", type=nonnegative_int, default=0, help="data loader workers")
    p.add_argument("--limit", type=positive_int, default=None, help="profile only the first N test images")
    return p


def table(full: dict, ours: dict, penalty: float) -> str:
    """Full ResNet-32 against BlockDrop: the figures of ``test.py``, and the time
    per image measured in BlockDrop's profiling run for both networks."""
    times = {"full": ours["full_time_per_image"], "ours": ours["time_per_image"]}
    rows = [("full ResNet-32 *", full, times["full"]), (f"BlockDrop (penalty {penalty:g})", ours, times["ours"])]
    lines = [f"{'':26s} {'accuracy':>8s}  {'blocks used':>14s}  {'FLOPs/img':>16s}  {'time/img †':>15s}  "
             f"{'unique policies':>15s}"]
    for name, f, seconds in rows:
        share = f["flops"] / full["flops"]
        blocks = f"{f['block_usage']:.2f} ± {f['block_usage_std']:.2f}"
        time_cell = f"{1000 * seconds:.2f} ms ({seconds / times['full']:4.0%})"
        lines.append(f"{name:26s} {f['accuracy']:8.3f}  {blocks:>14s}  "
                     f"{f['flops']:.2E} ({share:4.0%})  {time_cell:>15s}  {f['unique_policies']:15d}")
    lines.append(f"* as test.py counts it, with the policy network: ResNet-32 {full['full_resnet_flops']:.2E} "
                 f"+ policy network {full['policy_flops']:.2E}")
    lines.append(f"† measured in one run, batches of {ours['batch_size']} on {ours['device']}: BlockDrop runs the "
                 "policy network and each block on the images that keep it; the full ResNet has no policy network")
    return "\n".join(lines)


def set_aside_results(out: Path) -> Path:
    """Move an earlier run's results to ``<out>-<its time>/`` so a new run never
    mixes with them and nothing of them is lost."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(out.stat().st_mtime))
    kept = set_aside(sorted(out.iterdir()), out.with_name(f"{out.name}-{stamp}"))
    out.rmdir()
    return kept


def main(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    writable_folder(out.parent, "--out")
    started = time.time()
    if out.is_dir() and any(out.iterdir()):
        kept = set_aside_results(out)
        print(f"note: the earlier results in {out}/ were moved to {kept}/ (the demo starts afresh)")
    common = ["--model", args.model, "--data_dir", args.data_dir, "--workers", str(args.workers)]
    common += ["--device", args.device] if args.device else []
    seed = ["--seed", str(args.seed)]
    limit = ["--limit", str(args.limit)] if args.limit else []

    base = run_script("pretrain.py", common + seed + [
        "--epochs", str(args.base_epochs), "--milestones", *map(str, args.base_milestones),
        "--batch_size", str(args.base_batch_size), "--cv_dir", str(out / "pretrained")])

    cl = run_script("cl_training.py", common + seed + [
        "--base", str(base), "--cv_dir", str(out / "cl"), "--lr", str(args.cl_lr),
        "--penalty", str(args.cl_penalty), "--batch_size", str(args.batch_size), "--cl_step", str(args.cl_step),
        "--max_epochs", str(args.cl_epochs), "--test_every", str(max(1, args.cl_epochs))])

    result = run_script("sweep.py", [  # in the order of sweep.py's flags
        "--model", args.model, "--pretrained", cl["checkpoint"],
        "--penalties", *map(str, [args.penalty, *args.sweep_penalties]), "--cv_dir", str(out / "sweep"),
        "--data_dir", args.data_dir, "--base", str(base), "--max_epochs", str(args.ft_epochs),
        "--lr", str(args.ft_lr), "--batch_size", str(args.batch_size),
        "--test_every", str(max(1, args.ft_epochs)), *(["--device", args.device] if args.device else []),
        *seed, "--workers", str(args.workers), *limit, "--profile_batch_size", str(args.batch_size)])
    full, ours = result["full"], result["runs"][0]

    figures = out / "figures"
    vis = run_script("visualize.py", common + limit + [
        "--load", ours["checkpoint"], "--out", str(figures),
        "--sweep", str(out / "sweep" / "sweep.json"), "--log_dir", str(out / "log")])

    summary = {
        "model": args.model, "penalty": args.penalty, "full": full, "blockdrop": ours,
        "flops_ratio": ours["flops"] / full["flops"],
        "time_ratio": ours["time_per_image"] / ours["full_time_per_image"],
        "accuracy_drop": full["accuracy"] - ours["accuracy"],
        "base": str(base), "curriculum": cl["checkpoint"], "finetuned": ours["checkpoint"],
        "figures": sorted(str(p) for p in vis.values() if str(p).endswith(".png")),
        "sweep": str(out / "sweep" / "sweep.json"),
        "minutes": (time.time() - started) / 60,
        "settings": {k: getattr(args, k) for k in DEFAULTS},
    }
    write_json(out / "report.json", summary)
    text = table(full, ours, args.penalty)
    (out / "report.txt").write_text(text + "\n")
    print("\n" + text)
    print(f"\nBlockDrop: {summary['flops_ratio']:.1%} of the full network's FLOPs "
          f"({ours['flops'] / full['full_resnet_flops']:.1%} of the ResNet-32 alone) and "
          f"{ours['time_per_image'] / ours['full_time_per_image']:.1%} of its measured time, accuracy "
          f"{-100 * summary['accuracy_drop']:+.1f} points against the full ResNet-32 "
          f"({summary['minutes']:.1f} minutes in all)")
    print(f"written: {out / 'report.txt'}, {out / 'report.json'}, figures in {figures}/, "
          f"sweep in {out / 'sweep'}/, TensorBoard logs in {out / 'log'}/ and each run's log/")
    return summary


if __name__ == "__main__":
    run_cli(main, get_args_parser())
