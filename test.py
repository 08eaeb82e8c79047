"""Profile a BlockDrop model: accuracy, blocks used and FLOPs per image.

    python test.py --model R110_C10 --load cv/finetuned/R110_C10_gamma_10/ckpt_E_2000_A_0.936_R_1.95E-01_S_16.93_#_469.t7

Greedy policy, one image at a time, and only the chosen blocks run. FLOPs
count the policy network too (SPEC section 7). Without ``--load`` every block
runs: the full ResNet of the default pretrained base.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from engine import policy_stats, predict
from models import BlockDrop, build_agent, build_resnet, get_config
from utils.checkpoints import load_blockdrop_checkpoint, load_default_or_given_base, write_json
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
from utils.flops import agent_flops, policy_flops, resnet_flop_table


def get_args_parser() -> ArgumentParser:
    p = ArgumentParser(prog="test.py", description="BlockDrop profiling: accuracy, block usage, FLOPs/img")
    add_model_flag(p, "R110_C10")
    p.add_argument("--data_dir", default="data/", help="data set folder")
    p.add_argument("--load", default=None, help="BlockDrop checkpoint to profile (default: the full ResNet)")
    p.add_argument("--base", default=None,
                   help="pretrained base ResNet, used when --load holds no ResNet "
                        "(default: the configuration's file under cv/pretrained/)")
    add_device_flag(p)
    p.add_argument("--workers", type=nonnegative_int, default=0, help="data loader workers")
    p.add_argument("--limit", type=positive_int, default=None, help="profile only the first N test images")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the figures to this JSON file")
    return p


def profile(agent, resnet, dataset, device: torch.device, full: bool, limit: int | None = None,
            workers: int = 0) -> dict:
    """Run every test image on its own through the agent and the blocks it keeps
    (``full``: every block, no agent)."""
    if len(dataset) == 0:
        raise BlockDropError("no test images to profile: the test set is empty")
    size = dataset[0][0].shape[-1]
    table = resnet_flop_table(resnet, size)
    policy_net_flops = agent_flops(agent, size)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    loader = DataLoader(Subset(dataset, range(n)), batch_size=1, shuffle=False, num_workers=workers)
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
    }


def report(figures: dict) -> str:
    """The four lines of SPEC section 7."""
    return (
        f"    Accuracy: {figures['accuracy']:.3f}\n"
        f"    Block Usage: {figures['block_usage']:.3f} ± {figures['block_usage_std']:.3f}\n"
        f"    FLOPs/img: {figures['flops']:.2E} ± {figures['flops_std']:.2E}\n"
        f"    Unique Policies: {figures['unique_policies']}"
    )


def main(args: argparse.Namespace) -> dict:
    cfg = get_config(args.model)
    device = choose_device(args.device)
    resnet, agent = build_resnet(cfg), build_agent(cfg)  # its weights: --load's agent
    source = {}
    if args.load:
        ckpt = load_blockdrop_checkpoint(Path(args.load), cfg.name, agent, resnet)
        source["checkpoint"] = str(args.load)
        if not ckpt["has_resnet"]:
            source["base"] = str(load_default_or_given_base(resnet, cfg, args.base))
    else:
        source["base"] = str(load_default_or_given_base(resnet, cfg, args.base))
    _, testset = get_datasets(cfg, args.data_dir)
    agent.to(device)
    resnet.to(device)
    figures = profile(agent, resnet, testset, device, full=not args.load, limit=args.limit,
                      workers=args.workers)
    print(report(figures), flush=True)
    if args.json:
        write_json(Path(args.json), {"model": cfg.name, **source, **figures})
    return figures


if __name__ == "__main__":
    run_cli(main, get_args_parser())
