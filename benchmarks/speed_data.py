"""Images per second of a training epoch on each data path: the DataLoader
(``utils.runtime.data_loaders``, with the scripts' default workers and with none)
against ``--device_data`` (``utils.device_data``), on Fashion-like data (random
32x32 uint8 images with Fashion-MNIST's transforms: crop, flip, normalisation).
The batches alone (no step: what the data path itself costs), a pretraining
epoch (SGD on the cross-entropy, as ``pretrain.py`` steps) and a curriculum
epoch (the policy network learns, the ResNet frozen, as ``cl_training.py``
steps), each through the engine's ``train_one_epoch``: the
loop the scripts run, batches moved to the device as they do. The paths' epochs
are interleaved, the fastest of ``repeats`` kept; a DataLoader's workers start
anew each epoch where they do not persist (on the CPU), as in the scripts.
Used by ``benchmarks/speed.py --data_path`` and by ``gpu_check.py``."""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from engine import train_one_epoch
from models import build_agent, build_resnet, get_config
from rl import RLConfig, train_step
from utils.data import _cifar_style_datasets
from utils.distributed import Processes
from utils.runtime import data_loaders
from utils.timing import synchronize

WORKERS = 4  # the training scripts' default --workers


def fashion_like(name: str, images: int, seed: int = 0):
    """(train set, test set) of ``images`` random uint8 32x32 grey images in three
    channels, with the configuration's transforms (Fashion-MNIST's)."""
    rng = np.random.default_rng(seed)
    grey = rng.integers(0, 256, (images, 32, 32, 1), dtype=np.uint8).repeat(3, axis=3)
    labels = rng.integers(0, 10, images)
    return _cifar_style_datasets(((grey, labels), (grey[:64], labels[:64])), get_config(name).normalize)


def pretraining_step(name: str, device: torch.device, layout=torch.contiguous_format):
    torch.manual_seed(0)
    resnet = build_resnet(get_config(name)).to(device, memory_format=layout).train()
    optimizer = torch.optim.SGD(resnet.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def step(inputs, targets):
        loss = F.cross_entropy(resnet(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"loss": loss.detach()[None]}

    return step


def curriculum_step(name: str, device: torch.device, layout=torch.contiguous_format):
    config = get_config(name)
    torch.manual_seed(0)
    resnet, agent = build_resnet(config), build_agent(config)
    resnet.to(device, memory_format=layout).eval().requires_grad_(False)
    agent.to(device, memory_format=layout).train()
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-3)
    rl = RLConfig(alpha=0.8, penalty=-1.0, beta=0.1, joint=False)

    def step(inputs, targets):
        out = train_step(agent, resnet, inputs, targets, optimizer, agent.num_blocks, rl)
        return {"reward": out["reward"]}

    return step


def no_step(name: str, device: torch.device, layout=torch.contiguous_format):
    """The batches alone: what the data path itself costs an epoch."""
    return lambda inputs, targets: {}


PHASES = {"batches alone": no_step, "pretraining": pretraining_step, "curriculum": curriculum_step}


def paths(workers: int = WORKERS) -> dict[str, dict]:
    """The data paths measured: name -> ``data_loaders``'s workers and ``device_data``."""
    return {f"DataLoader, {workers} worker{'s' if workers != 1 else ''}": {"workers": workers, "device_data": False},
            "DataLoader, 0 workers": {"workers": 0, "device_data": False},
            "--device_data": {"workers": 0, "device_data": True}}


def epoch_seconds(step, loader, device: torch.device, layout) -> float:
    synchronize(device)
    start = time.perf_counter()
    train_one_epoch(step, loader, device, layout)
    synchronize(device)
    return time.perf_counter() - start


def data_path_rows(name: str, images: int, batch: int, repeats: int, device: torch.device,
                   layout=torch.contiguous_format, workers: int = WORKERS, phases=tuple(PHASES)) -> list[dict]:
    """Per phase and data path: images per second of an epoch (the fastest of
    ``repeats``, after a warm-up step), and the ratio to the DataLoader with ``workers``."""
    trainset, testset = fashion_like(name, images)
    procs = Processes(device=device)
    loaders = {path: data_loaders(trainset, testset, procs, batch, seed=0, **kw)[0]
               for path, kw in paths(workers).items()}
    rows = []
    for phase in phases:
        step = PHASES[phase](name, device, layout)
        inputs, targets, _ = next(iter(loaders["--device_data"]))
        step(inputs.contiguous(memory_format=layout), targets)  # warm-up: allocations, kernel selection
        seconds = {path: [] for path in loaders}
        for _ in range(repeats):
            for path, loader in loaders.items():
                seconds[path].append(epoch_seconds(step, loader, device, layout))
        fastest = {path: min(values) for path, values in seconds.items()}
        reference = fastest[next(iter(loaders))]
        rows += [{"network": name, "phase": phase, "batch": batch, "images": images, "path": path,
                  "images_per_s": images / s, "ratio": reference / s} for path, s in fastest.items()]
    return rows


def data_path_table(rows: list[dict]) -> str:
    lines = ["| network | epoch | batch | images | data path | images/s | speed against the DataLoader with workers |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['network']} | {r['phase']} | {r['batch']} | {r['images']:,} | {r['path']} | "
                     f"{r['images_per_s']:,.0f} | **{r['ratio']:.2f}** |")
    return "\n".join(lines)
