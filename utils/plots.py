"""The figures of the project: plain numbers and arrays in, a matplotlib Figure out.

``visualize.py`` draws an agent's figures with them and ``sweep.py`` its
trade-off curve; ``save_figure`` writes any of them as a PNG. Importing this
module selects matplotlib's Agg backend: figures go to files, never to a window.
Not part of ``import utils`` (matplotlib is slow to import): import
``utils.plots`` where figures are drawn.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator, PercentFormatter
from torch.nn import functional as F
from torchvision.utils import make_grid

from utils.files import atomic_write_bytes

DPI = 110
KEPT_COLOR = "#2f5f98"
STAGE_COLORS = ["#2f5f98", "#d9822b", "#3c8d40", "#8e44ad"]  # one per ResNet stage
WRONG_COLOR = "#c0392b"


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


def _image_row(images: list[np.ndarray], pad: int) -> np.ndarray:
    """Images of one size (H x W or H x W x 3, in [0, 1]) side by side on white,
    ``pad`` pixels around and between them, as one array: image j starts at row
    ``pad``, column ``pad + j * (W + pad)``."""
    tensors = [torch.tensor(im, dtype=torch.float32) for im in images]
    tensors = [t.expand(3, *t.shape) if t.ndim == 2 else t.permute(2, 0, 1) for t in tensors]
    grid = make_grid(tensors, nrow=len(tensors), padding=pad, pad_value=1.0)
    if len(tensors) == 1:  # make_grid returns a lone image without its border
        grid = F.pad(grid, (pad, pad, pad, pad), value=1.0)
    return grid.permute(1, 2, 0).numpy()


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
            ax_img.imshow(_image_row(images, pad), interpolation="nearest")
            h, w = images[0].shape[:2]
            for j, wrong in enumerate(row.get("wrong") or []):
                if wrong:
                    ax_img.add_patch(Rectangle((pad + j * (w + pad) - 0.5, pad - 0.5), w, h, fill=False,
                                               edgecolor=WRONG_COLOR, linewidth=2))
            # room for per_policy images and the gaps between them, not the outer border: the
            # same scale in every row, left-aligned, however many images a policy has
            ax_img.set_xlim(pad - 0.5, per_policy * (w + pad) - 0.5)
            ax_img.set_ylim(pad + h - 0.5, pad - 0.5)
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
    points = [{"label": f"γ={run['penalty']:g}", "flops": run["flops"], "accuracy": run["accuracy"]} for run in runs]
    star = {"flops": full.get("full_resnet_flops", full.get("flops")), "accuracy": full["accuracy"]} if full else None
    return _tradeoff({"BlockDrop (one point per penalty)": points}, star, "full ResNet (runs no policy network)",
                     title or "Accuracy against FLOPs over penalties", "FLOPs per image", decimals=1, margin=0.12,
                     size=(7.5, 5))


SERIES_COLORS = {"BlockDrop": KEPT_COLOR, "shallower ResNets": "#3c8d40", "FirstK, finetuned": "#d9822b",
                 "RandomK, finetuned": "#8e44ad", "DistributeK, finetuned": "#c0392b"}


def claims_tradeoff_figure(series: dict[str, list[dict]], full: dict | None, title: str = "") -> Figure:
    """The reproduction's trade-off: accuracy against FLOPs per image, each
    point the mean over seeds with error bars of one standard deviation on
    both axes. ``series`` maps a name to points (dicts with ``label``,
    ``flops``, ``flops_std``, ``accuracy``, ``accuracy_std``), drawn joined in
    order of FLOPs; ``full`` (``flops``, ``accuracy``) is the deep ResNet's star."""
    return _tradeoff(series, full, "the deep ResNet, every block",
                     title or "Accuracy against FLOPs (mean ± std over seeds)",
                     "FLOPs per image (BlockDrop's include its policy network)", decimals=0, margin=0.1,
                     size=(8.5, 5.5), fontsize=9)


def _tradeoff(series: dict[str, list[dict]], full: dict | None, full_label: str, title: str, xlabel: str,
              decimals: int, margin: float, size: tuple[float, float], fontsize=None) -> Figure:
    """The one trade-off chart: test accuracy (in percent) against FLOPs per
    image; each series' points joined in order of FLOPs and labelled, with
    error bars where they have a spread (``flops_std``, ``accuracy_std``), and
    the full ResNet as a star."""
    fig, ax = plt.subplots(figsize=size, dpi=DPI)
    for name, points in series.items():
        points = sorted(points, key=lambda p: p["flops"])
        x, y = [float(p["flops"]) for p in points], [float(p["accuracy"]) for p in points]
        color = next((c for key, c in SERIES_COLORS.items() if name.startswith(key)), "0.4")
        style = {"marker": "o" if name.startswith("BlockDrop") else "s", "color": color, "markersize": 6,
                 "linewidth": 1.5 if len(points) > 1 else 0, "label": name}
        if points and "flops_std" in points[0]:
            ax.errorbar(x, y, xerr=[p["flops_std"] for p in points], yerr=[p["accuracy_std"] for p in points],
                        elinewidth=1.2, capsize=3, **style)
        else:
            ax.plot(x, y, **style)
        for p, xi, yi in zip(points, x, y):
            ax.annotate(p["label"], (xi, yi), textcoords="offset points", xytext=(6, -12), fontsize=8, color=color)
    if full:
        ax.scatter([float(full["flops"])], [float(full["accuracy"])], marker="*", s=180, color=WRONG_COLOR, zorder=3,
                   label=full_label)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=decimals))
    ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    ax.margins(x=0.08, y=margin)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", frameon=False, fontsize=fontsize)
    fig.tight_layout()
    return fig


BAR_COLORS = {"BlockDrop": KEPT_COLOR, "FirstK": "#d9822b", "RandomK": "#8e44ad", "DistributeK": "#c0392b",
              "curriculum": KEPT_COLOR, "none": "0.55"}


def claims_bars_figure(panels: list[tuple[str, list[tuple[str, float, float]]]], title: str = "") -> Figure:
    """One panel per comparison (its title, and bars of (label, mean accuracy,
    standard deviation) with error bars), side by side; a bar's colour follows
    the first word of its label (BlockDrop, FirstK, RandomK, curriculum, none)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.4), dpi=DPI, squeeze=False)
    for ax, (heading, bars) in zip(axes[0], panels):
        colors = [BAR_COLORS.get(label.split(",")[0].split()[0], "0.4") for label, _, _ in bars]
        ax.bar(range(len(bars)), [b[1] for b in bars], yerr=[b[2] for b in bars], capsize=4, color=colors,
               width=0.65)
        for i, (_, mean, std) in enumerate(bars):
            ax.text(i, mean + std + 0.02, f"{mean:.1%}", ha="center", va="bottom", fontsize=9)
        ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=9)
        ax.set_ylim(0, 1.12)
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
        ax.set_title(heading, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (mean ± std over seeds)")
    fig.suptitle(title or "The paper's comparisons", fontsize=12)
    fig.tight_layout()
    return fig


ARM_COLORS = {"curriculum": KEPT_COLOR, "no curriculum": "#d9822b"}


def learning_curves_figure(arms: dict[str, list[dict]], handover: dict[str, int], title: str = "") -> Figure:
    """Training figures against the epoch, one panel each for the reward, the
    accuracy and the blocks used; one line per seed of each arm (``arms``
    maps a name to curves: dicts of equal-length lists ``epoch``, ``reward``,
    ``accuracy``, ``blocks``), the epoch of each arm's handover marked."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), dpi=DPI)
    for name, curves in arms.items():
        color = ARM_COLORS.get(name, "0.4")
        for i, curve in enumerate(curves):
            for ax, key in zip(axes, ("reward", "accuracy", "blocks")):
                ax.plot(curve["epoch"], curve[key], color=color, alpha=0.85, linewidth=1.1,
                        label=name if i == 0 else None)
        if name in handover and handover[name] > 0:
            for ax in axes:
                ax.axvline(handover[name], color=color, linestyle=":", linewidth=1)
    for ax, label in zip(axes, ("training reward", "training accuracy (sampled policies)", "blocks used")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    axes[0].legend(frameon=False, fontsize=9)
    fig.suptitle(title or "The curriculum's learning curves (one line per seed; dotted: the policy decides every "
                          "block from here)", fontsize=11)
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


def close_figure(fig: Figure) -> None:
    """Release a figure that ``save_figure(..., close=False)`` kept open."""
    plt.close(fig)
