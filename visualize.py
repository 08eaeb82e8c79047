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

``policies.json`` holds the figures behind the PNGs. The plotting functions
take plain numbers and arrays, so other scripts (a penalty sweep) can call
``tradeoff_figure(full, runs)`` themselves.
"""

from __future__ import annotations

import argparse
import io
import json
import math
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator, PercentFormatter
from torch.utils.data import DataLoader, Subset

from engine import policy_stats, predict
from models import BlockDrop, build_agent, build_resnet, get_config
from utils.checkpoints import load_trained
from utils.cli import (
    ArgumentParser,
    BlockDropError,
    add_device_flag,
    add_model_flag,
    choose_device,
    nonnegative_int,
    positive_int,
    run_cli,
)
from utils.data import get_datasets
from utils.files import atomic_write_bytes, writable_folder, write_json

DPI = 110
KEPT_COLOR = "#2f5f98"
STAGE_COLORS = ["#2f5f98", "#d9822b", "#3c8d40", "#8e44ad"]  # one per ResNet stage
WRONG_COLOR = "#c0392b"


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
    Returns CPU tensors: ``policies`` N x K (int8), ``blocks_used`` N, ``correct`` N (bool),
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


def display_image(image: torch.Tensor, normalize: tuple | None) -> np.ndarray:
    """A 3 x H x W test tensor as the picture it was: normalisation undone,
    clipped to [0, 1]; H x W when the three channels are equal (grey digits)."""
    image = image.detach().cpu().float()
    if normalize is not None:
        mean, std = (torch.tensor(v, dtype=image.dtype).view(-1, 1, 1) for v in normalize)
        image = image * std + mean
    image = image.clamp(0, 1)
    if torch.equal(image[0], image[1]) and torch.equal(image[0], image[2]):
        return image[0].numpy()
    return image.permute(1, 2, 0).numpy()


def stage_sizes_of(resnet) -> list[int]:
    """Blocks per stage, e.g. [5, 5, 5] for ResNet-32."""
    return list(Counter(s for s, _ in resnet.block_index).values())


# --------------------------------------------------------------------------
# figures (plain data in, a matplotlib Figure out)
# --------------------------------------------------------------------------
def _block_positions(stage_sizes: list[int], gap: float = 0.6) -> list[float]:
    """Left edge of each block's cell, with a gap between stages."""
    xs, x = [], 0.0
    for size in stage_sizes:
        for _ in range(size):
            xs.append(x)
            x += 1
        x += gap
    return xs


def draw_policy(ax, policy: str, stage_sizes: list[int], label_stages: bool = True) -> None:
    """One row of K cells, kept blocks filled, dropped ones empty, a gap and a
    dashed line between stages."""
    xs = _block_positions(stage_sizes)
    stage_of = [s for s, size in enumerate(stage_sizes) for _ in range(size)]
    for x, bit, stage in zip(xs, policy, stage_of):
        color = STAGE_COLORS[stage % len(STAGE_COLORS)]
        ax.add_patch(Rectangle((x + 0.08, 0.0), 0.84, 1.0, facecolor=color if bit == "1" else "white",
                               edgecolor=color, linewidth=1.0))
    start = 0
    for s, size in enumerate(stage_sizes):
        if s > 0:
            edge = xs[start] - 0.3
            ax.plot([edge, edge], [-0.15, 1.15], color="0.55", linestyle="--", linewidth=0.8)
        if label_stages:
            middle = (xs[start] + xs[start + size - 1] + 1) / 2
            ax.text(middle, -0.25, f"stage {s + 1}", ha="center", va="top", fontsize=8, color="0.35")
        start += size
    ax.set_xlim(-0.2, xs[-1] + 1.2)
    ax.set_ylim(-0.85 if label_stages else -0.3, 1.3)
    ax.axis("off")


def image_mosaic(images: list[np.ndarray], pad: int = 2) -> np.ndarray:
    """Images side by side with a white gap, as one H x W x 3 array."""
    rgb = [np.repeat(im[..., None], 3, axis=2) if im.ndim == 2 else im for im in images]
    h = max(im.shape[0] for im in rgb)
    columns = []
    for im in rgb:
        framed = np.ones((h, im.shape[1] + pad, 3), dtype=np.float32)
        framed[: im.shape[0], : im.shape[1]] = im
        columns.append(framed)
    return np.concatenate(columns, axis=1)[:, :-pad]


def policy_rows_figure(rows: list[dict], stage_sizes: list[int], total_images: int,
                       per_policy: int = 8, title: str = "") -> Figure:
    """``policies.png``: one row per policy. Each row is a dict with ``policy``
    (``"0110..."``), ``count``, ``accuracy`` and ``images`` (H x W or H x W x 3
    arrays in [0, 1]) and optionally ``wrong`` (one bool per image: framed in red)."""
    num_blocks = sum(stage_sizes)
    row_height, header = 1.25, 1.2
    height = header + row_height * len(rows)
    fig = plt.figure(figsize=(13, height), dpi=DPI)
    grid = fig.add_gridspec(len(rows), 2, width_ratios=[1.0, 1.15], wspace=0.06, hspace=0.45,
                            left=0.02, right=0.98, top=1 - header / height, bottom=0.02)
    for r, row in enumerate(rows):
        ax = fig.add_subplot(grid[r, 0])
        draw_policy(ax, row["policy"], stage_sizes)
        kept = row["policy"].count("1")
        images_word = "image" if row["count"] == 1 else "images"
        ax.set_title(f"#{r + 1}:  {row['count']} {images_word} ({row['count'] / total_images:.1%})   "
                     f"accuracy {row['accuracy']:.1%}   {kept} of {num_blocks} blocks",
                     loc="left", fontsize=10)
        ax_img = fig.add_subplot(grid[r, 1])
        ax_img.axis("off")
        images = row.get("images") or []
        if images:
            pad = 2
            ax_img.imshow(image_mosaic(images, pad), interpolation="nearest")
            width = images[0].shape[1] + pad
            for j, wrong in enumerate(row.get("wrong") or []):
                if wrong:
                    h, w = images[j].shape[:2]
                    ax_img.add_patch(Rectangle((j * width - 0.5, -0.5), w, h, fill=False,
                                               edgecolor=WRONG_COLOR, linewidth=2))
            # the same scale in every row, left-aligned, however many images a policy has
            ax_img.set_xlim(-0.5, per_policy * width - pad - 0.5)
            ax_img.set_anchor("W")
        if r == 0:
            ax_img.set_title(f"test images that take it (first {per_policy}; red frame: misclassified)",
                             loc="left", fontsize=10)
    fig.suptitle(title or "Most frequent policies (filled: block kept, empty: dropped)", fontsize=12)
    return fig


def _integer_ticks(axis, last: int, most: int = 20) -> None:
    """Every integer 0..last as a tick when they fit, else a sparser integer locator."""
    if last + 1 <= most:
        axis.set_ticks(np.arange(last + 1))
    else:
        axis.set_major_locator(MaxNLocator(integer=True, nbins=most))


def blocks_hist_figure(blocks_used, num_blocks: int, title: str = "") -> Figure:
    """``blocks_hist.png``: how many test images use 0, 1, ..., K blocks, mean marked."""
    used = np.asarray(blocks_used, dtype=np.int64)
    counts = np.bincount(used, minlength=num_blocks + 1)[: num_blocks + 1]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=DPI)
    ax.bar(np.arange(num_blocks + 1), counts, width=0.85, color=KEPT_COLOR, edgecolor="white")
    mean = float(used.mean()) if len(used) else float("nan")
    ax.axvline(mean, color=WRONG_COLOR, linestyle="--", linewidth=1.5,
               label=f"mean {mean:.2f} blocks" + (f" (sd {used.std(ddof=1):.2f})" if len(used) > 1 else ""))
    ax.set_xlim(-0.8, num_blocks + 0.8)
    _integer_ticks(ax.xaxis, num_blocks)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"blocks used per image (of {num_blocks})")
    ax.set_ylabel("test images")
    ax.set_title(title or "Blocks used per image")
    ax.legend(loc="upper left", frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def keep_rate_figure(keep_rate, stage_sizes: list[int], title: str = "") -> Figure:
    """``keep_rate.png``: share of test images that run each block, one bar per
    block coloured by stage, stage boundaries dashed."""
    rates = np.asarray(keep_rate, dtype=np.float64)
    stage_of = [s for s, size in enumerate(stage_sizes) for _ in range(size)]
    fig, ax = plt.subplots(figsize=(max(8, 0.16 * len(rates) + 3), 4.5), dpi=DPI)
    colors = [STAGE_COLORS[s % len(STAGE_COLORS)] for s in stage_of]
    ax.bar(np.arange(len(rates)), rates, width=0.8, color=colors)
    start = 0
    for s, size in enumerate(stage_sizes):
        if s > 0:
            ax.axvline(start - 0.5, color="0.55", linestyle="--", linewidth=0.8)
        ax.text(start + (size - 1) / 2, 1.07, f"stage {s + 1}", ha="center", va="bottom", fontsize=9,
                color=STAGE_COLORS[s % len(STAGE_COLORS)])
        start += size
    ax.set_ylim(0, 1.16)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1))
    ax.set_xlim(-0.7, len(rates) - 0.3)
    _integer_ticks(ax.xaxis, len(rates) - 1, most=30)
    ax.set_xlabel("block (in execution order, from 0)")
    ax.set_ylabel("keep rate (share of test images)")
    ax.set_title(title or "How often each block runs", pad=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def easy_hard_figure(easy: list[dict], hard: list[dict], num_blocks: int, title: str = "") -> Figure:
    """``easy_hard.png``: two rows of images, the fewest and the most blocks.
    Each item is a dict with ``image`` (array in [0, 1]), ``blocks``, ``correct``
    and optionally ``pred`` and ``target`` (named when the prediction is wrong)."""
    columns = max(len(easy), len(hard), 1)
    fig, axes = plt.subplots(2, columns, figsize=(max(8.0, 1.25 * columns + 1.4), 4.3), dpi=DPI,
                             squeeze=False)
    for r, (items, heading) in enumerate(((easy, "easiest\n(fewest blocks)"), (hard, "hardest\n(most blocks)"))):
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c == 0:
                ax.set_ylabel(heading, fontsize=11, labelpad=10)
            if c >= len(items):
                continue
            item = items[c]
            image = item["image"]
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            label = f"{item['blocks']} blocks"
            if item["correct"]:
                ax.set_title(label, fontsize=9)
                continue
            said = f"\nwrong: said {item['pred']}" if "pred" in item else "\nwrong"
            if "pred" in item and "target" in item:
                said += f", is {item['target']}"
            ax.set_title(label + said, fontsize=9, color=WRONG_COLOR)
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_edgecolor(WRONG_COLOR)
                spine.set_linewidth(2)
    fig.suptitle(title or f"Blocks used (of {num_blocks}) by the easiest and hardest test images", fontsize=12)
    fig.tight_layout(h_pad=1.2)
    return fig


def tradeoff_figure(full: dict | None, runs: list[dict], title: str = "") -> Figure:
    """``tradeoff.png``: accuracy against FLOPs per image over a penalty sweep,
    as in the paper: one point per penalty (labelled gamma), joined in order of
    FLOPs, and the full ResNet as its own marker. ``runs`` are dicts with
    ``penalty``, ``accuracy`` (0..1) and ``flops``; ``full`` has ``accuracy``
    and ``full_resnet_flops`` (or ``flops``), or is None."""
    points = sorted(runs, key=lambda run: run["flops"])
    x = [float(run["flops"]) for run in points]
    y = [float(run["accuracy"]) for run in points]
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=DPI)
    ax.plot(x, y, marker="o", color=KEPT_COLOR, linewidth=1.5, markersize=6, label="BlockDrop (one point per penalty)")
    for run, xi, yi in zip(points, x, y):
        ax.annotate(f"γ={run['penalty']:g}", (xi, yi), textcoords="offset points", xytext=(6, -12),
                    fontsize=8, color="0.25")
    if full:
        full_x = float(full.get("full_resnet_flops", full.get("flops")))
        ax.scatter([full_x], [float(full["accuracy"])], marker="*", s=180, color=WRONG_COLOR, zorder=3,
                   label="full ResNet (runs no policy network)")
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=1))
    ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    ax.margins(x=0.08, y=0.12)
    ax.set_xlabel("FLOPs per image")
    ax.set_ylabel("test accuracy")
    ax.set_title(title or "Accuracy against FLOPs over penalties")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", frameon=False)
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: Path, close: bool = True) -> Path:
    """PNG to a temporary file, then renamed into place."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    atomic_write_bytes(Path(path), buffer.getvalue())
    if close:
        plt.close(fig)
    return Path(path)


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
            plt.close(fig)
    return written


def main(args: argparse.Namespace) -> dict:
    """Returns the paths written: one per figure (``policies``, ``blocks_hist``,
    ``keep_rate``, ``easy_hard``, ``tradeoff``), ``json``, ``out`` and ``log_dir``."""
    cfg = get_config(args.model)
    sweep = load_sweep(Path(args.sweep)) if args.sweep else None
    device = choose_device(args.device)
    ckpt_path = Path(args.load)
    out = writable_folder(Path(args.out) if args.out else ckpt_path.parent / "figures", "--out", create=False)
    resnet, agent = build_resnet(cfg), build_agent(cfg)  # its weights: --load's agent
    ckpt = load_trained(ckpt_path, cfg, agent, resnet, args.base)
    _, testset = get_datasets(cfg, args.data_dir)
    log_dir = Path(args.log_dir) if args.log_dir else out.parent / "log"

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
