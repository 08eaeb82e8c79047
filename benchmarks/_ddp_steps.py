"""Joint finetuning steps in each process that torchrun started, the policy
network and the ResNet wrapped in DistributedDataParallel as the training
scripts wrap them (``utils.runtime.parallelize``), each process on images and samples
of its own; each saves its parameters as OUT/rank<RANK>.t7 for
``gpu_check.py`` to compare:

    python -m torch.distributed.run --standalone --nproc_per_node 2 benchmarks/_ddp_steps.py OUT --device cuda

The process group: NCCL where every process has a GPU of its own (the
scripts' own set-up), gloo on CUDA tensors where the processes share one GPU
(NCCL refuses two processes on one GPU), gloo on the CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's modules

from models import build_agent, build_resnet, get_config
from rl import RLConfig, train_step
from utils.distributed import Processes, choose_device, setup
from utils.runtime import parallelize


def start(device_flag: str) -> Processes:
    device = choose_device(device_flag)
    if device.type == "cpu" or torch.cuda.device_count() >= int(os.environ["WORLD_SIZE"]):
        return setup(device_flag)
    device = torch.device("cuda", device.index or 0)
    torch.cuda.set_device(device)
    dist.init_process_group("gloo")
    return Processes(dist.get_rank(), dist.get_world_size(), device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="R32_C10")
    parser.add_argument("--batch_size", type=int, default=4, help="per process")
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    procs = start(args.device)
    try:
        cfg = get_config(args.model)
        torch.manual_seed(0)
        resnet, agent = build_resnet(cfg), build_agent(cfg)
        layout = torch.channels_last if procs.device.type == "cuda" else torch.contiguous_format
        agent.to(procs.device, memory_format=layout).train()
        resnet.to(procs.device, memory_format=layout).train()
        named = [*(("agent." + k, p) for k, p in agent.named_parameters()),
                 *(("resnet." + k, p) for k, p in resnet.named_parameters())]
        before = [p.detach().clone() for _, p in named]
        optimizer = torch.optim.Adam([p for _, p in named], lr=1e-3)
        wrapped_agent, wrapped_resnet = parallelize(procs, False, [agent, resnet])
        torch.manual_seed(1 + procs.rank)  # each process its own images and samples
        rl = RLConfig(alpha=0.8, penalty=-5.0, joint=True, world_size=procs.world_size)
        losses = []
        for _ in range(args.steps):
            x = torch.rand(args.batch_size, 3, cfg.input_size, cfg.input_size)
            y = torch.randint(cfg.num_classes, (args.batch_size,))
            x, y = x.to(procs.device).contiguous(memory_format=layout), y.to(procs.device)
            out = train_step(wrapped_agent, wrapped_resnet, x, y, optimizer, cfg.num_blocks, rl)
            losses.append(out["loss"])
        moved = max((p.detach() - b).abs().max().item() for (_, p), b in zip(named, before))
        torch.save({"backend": dist.get_backend(), "device": str(procs.device), "losses": losses, "moved": moved,
                    "params": {k: p.detach().cpu() for k, p in named}},
                   Path(args.out) / f"rank{procs.rank}.t7")
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
