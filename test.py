"""Profile a BlockDrop model: accuracy, blocks used, FLOPs and measured time per image.

    python test.py --model R110_C10 --load cv/finetuned/R110_C10_gamma_10/ckpt_E_2000_A_0.936_R_1.95E-01_S_16.93_#_469.t7

Greedy policy, and only the chosen blocks run: one image at a time by default,
as the original profiles, or in batches (``--batch_size``) where each block
runs on the images that keep it. FLOPs count the policy network too (SPEC
section 7). Without ``--load`` every block runs: the full ResNet of the default
pretrained base. After the original's four lines, the measured time per image
of the model and of the full ResNet, timed the same way in the same run.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from evaluation import policy_stats, predict
from models import BlockDrop, build_resnet, get_config
from utils.bases import load_base_for
from utils.checkpoints import load_trained, policy_source, recorded_policy
from utils.cli import (
    ArgumentParser,
    add_device_flag,
    add_model_flag,
    add_policy_flags,
    nonnegative_int,
    positive_int,
    run_cli,
)
from utils.data import get_datasets
from utils.distributed import choose_device
from utils.errors import BlockDropError
from utils.files import load_state_file, output_file, write_json
from utils.flops import agent_flops, policy_flops, resnet_flop_table
from utils.timing import seconds_per_image


def get_args_parser() -> ArgumentParser:
    p = ArgumentParser(prog="test.py", description="BlockDrop profiling: accuracy, block usage, FLOPs/img, time/img")
    add_model_flag(p, "R110_C10")
    p.add_argument("--data_dir", default="data/", help="data set folder")
    p.add_argument("--load", default=None, help="BlockDrop checkpoint to profile (default: the full ResNet)")
    p.add_argument("--base", default=None,
                   help="pretrained base ResNet, used when --load holds no ResNet "
                        "(default: the configuration's file under cv/pretrained/)")
    add_device_flag(p)
    p.add_argument("--batch_size", type=positive_int, default=1,
                   help="images per batch, each block run on the images that keep it; 1 is the original's "
                        "one-image profile, and every figure but the time is the same at any batch size")
    p.add_argument("--time_images", type=nonnegative_int, default=256,
                   help="how many of the profiled images to time (at least one batch; 0: no time line)")
    p.add_argument("--workers", type=nonnegative_int, default=0, help="data loader workers")
    p.add_argument("--limit", type=positive_int, default=None, help="profile only the first N test images")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the metrics to this JSON file")
    add_policy_flags(p, "with --load, the ResNet of that checkpoint and, when not given, the policy it was "
                        "finetuned under; without --load, the base", seed=True)
    return p


def profile(agent, resnet, dataset, device: torch.device, full: bool, limit: int | None = None,
            workers: int = 0, batch_size: int = 1) -> dict:
    """Every test image through the agent and the blocks it keeps (``full``:
    every block, no agent), ``batch_size`` images at a time."""
    if len(dataset) == 0:
        raise BlockDropError("no test images to profile: the test set is empty")
    size = dataset[0][0].shape[-1]
    table = resnet_flop_table(resnet, size)
    policy_net_flops = agent_flops(agent, size)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    loader = DataLoader(Subset(dataset, range(n)), batch_size=batch_size, shuffle=False, num_workers=workers)
    out = predict(BlockDrop(None if full else agent, resnet), loader, device, desc="profiling")
    policies = out["policies"]
    stats = policy_stats(policies)
    resnet_costs = policy_flops(table, policies).tolist()
    flops = [c + policy_net_flops for c in resnet_costs]
    return {
        "images": n,
        "accuracy": out["correct"].double().mean().item(),
        "block_usage": stats["blocks"],
        "block_usage_std": stats["blocks_std"],
        "flops": statistics.fmean(flops),
        "flops_std": statistics.pstdev(flops),
        "resnet_flops": statistics.fmean(resnet_costs),
        "resnet_flops_std": statistics.pstdev(resnet_costs),
        "policy_flops": policy_net_flops,
        "full_resnet_flops": table[0] + sum(table[1]),
        "unique_policies": stats["unique"],
        "num_blocks": policies.shape[1],
        "batch_size": batch_size,
    }


def measure_time(agent, resnet, dataset, device: torch.device, full: bool, images: int, batch_size: int) -> dict:
    """Seconds per image of the model (policy network and kept blocks; ``full``:
    the full ResNet) and of the full ResNet, on the first ``images`` test images
    (at least one batch), at ``batch_size``, on ``device``, in the same run."""
    n = min(len(dataset), max(images, batch_size))
    x = torch.stack([dataset[i][0] for i in range(n)]).to(device)
    model = BlockDrop(None if full else agent, resnet).eval()
    seconds = seconds_per_image({"model": model, "full": resnet.eval()}, x, batch_size)
    return {"time_images": n, "time_per_image": seconds["model"], "full_time_per_image": seconds["full"]}


def _ms(value: float) -> str:
    """Three significant digits, without an exponent (a second and more in whole milliseconds)."""
    return f"{value:.3g}" if value < 1000 else f"{value:.0f}"


def report(metrics: dict) -> str:
    """The four lines of SPEC section 7, then the measured time when there is one."""
    lines = (
        f"    Accuracy: {metrics['accuracy']:.3f}\n"
        f"    Block Usage: {metrics['block_usage']:.3f} ± {metrics['block_usage_std']:.3f}\n"
        f"    FLOPs/img: {metrics['flops']:.2E} ± {metrics['flops_std']:.2E}\n"
        f"    Unique Policies: {metrics['unique_policies']}"
    )
    if "time_per_image" in metrics:
        ms, full_ms = 1000 * metrics["time_per_image"], 1000 * metrics["full_time_per_image"]
        lines += (f"\n    Time/img: {_ms(ms)} ms (full ResNet {_ms(full_ms)} ms): "
                  f"{full_ms / ms:.2f}x measured, {metrics['full_resnet_flops'] / metrics['flops']:.2f}x in FLOPs")
    return lines


def main(args: argparse.Namespace) -> dict:
    if args.json:
        output_file(Path(args.json), "--json", "JSON")  # before any work; never a checkpoint replaced
    config = get_config(args.model)
    device = choose_device(args.device)
    obj = load_state_file(args.load) if args.load else None
    resnet = build_resnet(config)
    agent = policy_source(config, args.policy, args.k, args.seed, recorded_policy(obj))  # weights: --load's
    fixed = not getattr(agent, "learnable", True)
    source = {"policy": agent.record() if fixed else {"policy": "learned"}}
    if args.load:
        ckpt = load_trained(args.load, config, agent, resnet, args.base, obj)
        source["checkpoint"] = str(args.load)
        if "base_loaded" in ckpt:
            source["base"] = ckpt["base_loaded"]["path"]
    else:
        source["base"] = load_base_for(resnet, config, args.base)["path"]
    _, testset = get_datasets(config, args.data_dir)
    agent.to(device)
    resnet.to(device)
    full = not args.load and not fixed
    metrics = profile(agent, resnet, testset, device, full, args.limit, args.workers, args.batch_size)
    if args.time_images:
        timed = Subset(testset, range(metrics["images"]))
        metrics.update(measure_time(agent, resnet, timed, device, full, args.time_images, args.batch_size))
        metrics["device"] = str(device)
    print(report(metrics), flush=True)
    if args.json:
        write_json(Path(args.json), {"model": config.name, **source, **metrics})
    return metrics


if __name__ == "__main__":
    run_cli(main, get_args_parser())
