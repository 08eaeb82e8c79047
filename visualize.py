"""Figures of what a BlockDrop agent learned: which policies it picks, for which images.

    python visualize.py --model R110_C10 --load cv/finetuned/R110_C10_gamma_10/ckpt_E_2000_A_0.936_R_1.95E-01_S_16.93_#_469.t7

The greedy policy runs on the test set (batched, masked form) and these PNGs
go to ``--out`` (default: ``figures/`` beside the checkpoint) and to
TensorBoard (default: ``<out>/../log``, the run's ``cv_dir/log``):

- ``policies.png``: the most frequent policies, each with its share of the
  test set, its accuracy and test images that take it (the paper's Fig. 5);
- ``blocks_hist.png``: blocks used per image;
- ``keep_rate.png``: how often each block runs;
- ``easy_hard.png``: the images with the shortest and the longest paths;
- ``tradeoff.png`` (with ``--sweep``): accuracy against FLOPs over penalties
  (the paper's Fig. 3 / 4).

``policies.json`` holds the figures behind the PNGs. The drawing itself is in
``utils.plots``, whose functions take plain numbers and arrays (``sweep.py``
draws its curve with ``tradeoff_figure(full, runs)``).
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch.utils.data import DataLoader, Subset

from evaluation import policy_stats, predict
from models import BlockDrop, build_agent, build_resnet, get_config
from utils.checkpoints import load_trained
from utils.cli import ArgumentParser, add_device_flag, add_model_flag, nonnegative_int, positive_int, run_cli
from utils.data import get_datasets
from utils.distributed import choose_device
from utils.errors import BlockDropError
from utils.files import output_file, writable_folder, write_json
from utils.plots import (
    blocks_hist_figure,
    close_figure,
    display_image,
    easy_hard_figure,
    keep_rate_figure,
    policy_rows_figure,
    save_figure,
    tradeoff_figure,
)


def get_args_parser() -> ArgumentParser:
    p = ArgumentParser(prog="visualize.py", description="BlockDrop figures: policies, block usage, trade-off")
    add_model_flag(p, "R110_C10")
    p.add_argument("--load", required=True, help="BlockDrop checkpoint whose agent to show")
    p.add_argument("--base", default=None,
                   help="pretrained base ResNet, used when --load holds no ResNet "
                        "(default: the configuration's file under cv/pretrained/)")
    p.add_argument("--data_dir", default="data/", help="data set folder")
    p.add_argument("--out", default=None, help="folder for the PNGs and policies.json "
                   "(default: figures/ beside the checkpoint)")
    add_device_flag(p)
    p.add_argument("--top", type=positive_int, default=6, help="how many of the most frequent policies to draw")
    p.add_argument("--per_policy", type=positive_int, default=8, help="test images shown per policy")
    p.add_argument("--extremes", type=positive_int, default=8,
                   help="images shown in each row of easy_hard.png (fewest and most blocks)")
    p.add_argument("--sweep", default=None, metavar="SWEEP_JSON",
                   help="penalty sweep results; draws tradeoff.png (default: no trade-off figure)")
    p.add_argument("--limit", type=positive_int, default=None, help="use only the first N test images (default: all)")
    p.add_argument("--batch_size", type=positive_int, default=256, help="test batch size")
    p.add_argument("--workers", type=nonnegative_int, default=0, help="data loader workers")
    p.add_argument("--log_dir", default=None, help="TensorBoard folder (default: <out>/../log)")
    return p


# --------------------------------------------------------------------------
# running the agent
# --------------------------------------------------------------------------
def collect_policies(agent, resnet, dataset, device: torch.device, limit: int | None = None,
                     batch_size: int = 256, workers: int = 0) -> dict:
    """Greedy policy, prediction and correctness of each test image (in dataset order).
    Returns CPU tensors: ``policies`` N x num_blocks (int8), ``blocks_used`` N, ``correct`` N (bool),
    ``targets`` N, ``preds`` N."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    loader = DataLoader(Subset(dataset, range(n)), batch_size=batch_size, shuffle=False, num_workers=workers)
    out = predict(BlockDrop(agent, resnet), loader, device, desc="policies")
    policies = out["policies"].to(torch.int8)
    return {**out, "policies": policies, "blocks_used": policies.sum(1).long()}


def policy_string(policy) -> str:
    """A policy as ``"0110..."``: one character per block, block 0 first."""
    return "".join(str(int(v)) for v in policy)


def summarize_policies(collected: dict) -> dict:
    """Counts and accuracy of every distinct policy (most frequent first; ties in
    order of first appearance) and each block's keep rate."""
    strings = [policy_string(p) for p in collected["policies"].tolist()]
    correct = collected["correct"].tolist()
    counts = Counter(strings)
    right = Counter(s for s, ok in zip(strings, correct) if ok)
    first_seen = {}
    for i, s in enumerate(strings):
        first_seen.setdefault(s, i)
    order = sorted(counts, key=lambda s: (-counts[s], first_seen[s]))
    n = len(strings)
    table = [{"policy": s, "count": counts[s], "share": counts[s] / n, "accuracy": right[s] / counts[s],
              "blocks": s.count("1")} for s in order]
    return {"table": table, "strings": strings,
            "keep_rate": collected["policies"].double().mean(0).tolist()}


def stage_sizes_of(resnet) -> list[int]:
    """Blocks per stage, e.g. [5, 5, 5] for ResNet-32."""
    return list(Counter(s for s, _ in resnet.block_index).values())


# --------------------------------------------------------------------------
# the penalty sweep file
# --------------------------------------------------------------------------
def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_sweep(path: Path) -> dict:
    """Read and check a sweep JSON: ``{"model", "full": {...}, "runs": [{"penalty",
    "accuracy", "flops", ...}, ...]}``. Anything else is one BlockDropError."""
    path = Path(path)
    if not path.is_file():
        raise BlockDropError(f"--sweep {path}: no such file")
    try:
        sweep = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BlockDropError(f"--sweep {path}: not valid JSON ({exc})") from exc
    except (RecursionError, ValueError) as exc:  # nested too deep, or a number of thousands of digits
        raise BlockDropError(f"--sweep {path}: not a sweep file ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:120]})") from exc
    if not isinstance(sweep, dict) or not isinstance(sweep.get("runs"), list) or not sweep["runs"]:
        raise BlockDropError(f"--sweep {path}: expected an object with a non-empty 'runs' list")
    for i, run in enumerate(sweep["runs"]):
        bad = [k for k in ("penalty", "accuracy", "flops") if not isinstance(run, dict) or not _number(run.get(k))]
        if bad:
            raise BlockDropError(f"--sweep {path}: runs[{i}] lacks a number for {', '.join(bad)}")
    full = sweep.get("full")
    if full is not None:
        flops = full.get("full_resnet_flops", full.get("flops")) if isinstance(full, dict) else None
        if not (_number(flops) and _number(full.get("accuracy"))):
            raise BlockDropError(f"--sweep {path}: 'full' needs numbers for accuracy and flops")
    return sweep


# --------------------------------------------------------------------------
# the script
# --------------------------------------------------------------------------
FIGURES = ("policies", "blocks_hist", "keep_rate", "easy_hard")  # the PNGs of one agent, by file stem


def make_figures(collected: dict, summary: dict, testset, cfg, stage_sizes: list[int],
                 args: argparse.Namespace, heading: str) -> dict[str, Figure]:
    """The four figures of one agent on the test set, keyed by file stem."""
    n = len(summary["strings"])
    num_blocks = sum(stage_sizes)
    blocks_used = collected["blocks_used"].tolist()
    correct, preds, targets = (collected[k].tolist() for k in ("correct", "preds", "targets"))

    def picture(i: int) -> np.ndarray:
        return display_image(testset[i][0], cfg.normalize)

    rows = []
    for entry in summary["table"][: args.top]:
        members = [i for i, s in enumerate(summary["strings"]) if s == entry["policy"]][: args.per_policy]
        rows.append({**entry, "images": [picture(i) for i in members],
                     "wrong": [not correct[i] for i in members]})

    def extreme(i: int) -> dict:
        return {"image": picture(i), "blocks": blocks_used[i], "correct": correct[i],
                "pred": preds[i], "target": targets[i]}

    fewest = sorted(range(n), key=lambda i: (blocks_used[i], i))[: args.extremes]
    most = sorted(range(n), key=lambda i: (-blocks_used[i], i))[: args.extremes]
    return {
        "policies": policy_rows_figure(
            rows, stage_sizes, n, args.per_policy,
            title=f"Most frequent policies (filled: block kept, empty: dropped)\n{heading}"),
        "blocks_hist": blocks_hist_figure(blocks_used, num_blocks, title=f"Blocks used per image\n{heading}"),
        "keep_rate": keep_rate_figure(summary["keep_rate"], stage_sizes,
                                      title=f"How often each block runs\n{heading}"),
        "easy_hard": easy_hard_figure(
            [extreme(i) for i in fewest], [extreme(i) for i in most], num_blocks,
            title=f"Blocks used (of {num_blocks}) by the easiest and hardest test images\n{heading}"),
    }


def write_figures(figures: dict[str, Figure], out: Path, log_dir: Path, step: int = 0) -> dict[str, Path]:
    """Each figure as ``out/<name>.png`` and as ``visualize/<name>`` in TensorBoard; closes them."""
    from torch.utils.tensorboard import SummaryWriter  # slow to import: only where figures are written

    written = {}
    writer = SummaryWriter(str(log_dir))
    try:
        for name, fig in figures.items():
            written[name] = save_figure(fig, out / f"{name}.png", close=False)
            writer.add_figure(f"visualize/{name}", fig, global_step=step, close=False)
    finally:
        writer.close()
        for fig in figures.values():
            close_figure(fig)
    return written


def main(args: argparse.Namespace) -> dict:
    """Returns the paths written: one per figure (``policies``, ``blocks_hist``,
    ``keep_rate``, ``easy_hard``, ``tradeoff``), ``json``, ``out`` and ``log_dir``."""
    cfg = get_config(args.model)
    sweep = load_sweep(Path(args.sweep)) if args.sweep else None
    device = choose_device(args.device)
    ckpt_path = Path(args.load)
    out = writable_folder(Path(args.out) if args.out else ckpt_path.parent / "figures", "--out", create=False)
    log_dir = writable_folder(Path(args.log_dir) if args.log_dir else out.parent / "log", "--log_dir", create=False)
    for name in [*FIGURES, *(["tradeoff"] if sweep is not None else [])]:  # none replaces a file of another kind
        output_file(out / f"{name}.png", "--out", "PNG")
    output_file(out / "policies.json", "--out", "JSON")
    resnet, agent = build_resnet(cfg), build_agent(cfg)  # its weights: --load's agent
    ckpt = load_trained(ckpt_path, cfg, agent, resnet, args.base)
    _, testset = get_datasets(cfg, args.data_dir)

    agent.to(device)
    resnet.to(device)
    collected = collect_policies(agent, resnet, testset, device, args.limit, args.batch_size, args.workers)
    summary = summarize_policies(collected)
    stats = policy_stats(collected["policies"])
    n = len(summary["strings"])
    accuracy = collected["correct"].double().mean().item()
    heading = (f"{cfg.name}, {ckpt_path.name}\n{n} test images, accuracy {accuracy:.1%}, "
               f"{stats['blocks']:.2f} blocks on average, {stats['unique']} distinct policies")

    figures = make_figures(collected, summary, testset, cfg, stage_sizes_of(resnet), args, heading)
    if sweep is not None:
        figures["tradeoff"] = tradeoff_figure(
            sweep.get("full"), sweep["runs"],
            title=f"{sweep.get('model', cfg.name)}: accuracy against FLOPs over penalties")
    step = ckpt["epoch"] if isinstance(ckpt.get("epoch"), int) else 0
    written = write_figures(figures, out, log_dir, step)

    json_path = out / "policies.json"
    write_json(json_path, {
        "model": cfg.name,
        "checkpoint": str(ckpt_path),
        "images": n,
        "accuracy": accuracy,
        "block_usage": stats["blocks"],
        "block_usage_std": stats["blocks_std"],
        "unique_policies": stats["unique"],
        "policies": [{k: e[k] for k in ("policy", "count", "share", "accuracy", "blocks")}
                     for e in summary["table"][: args.top]],
        "keep_rate": summary["keep_rate"],
        "files": [p.name for p in written.values()],
    })
    print(f"wrote {', '.join(p.name for p in written.values())} and {json_path.name} to {out}; "
          f"TensorBoard figures in {log_dir}", flush=True)
    return {**written, "json": json_path, "out": out, "log_dir": log_dir}


if __name__ == "__main__":
    run_cli(main, get_args_parser())
