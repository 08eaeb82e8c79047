"""Measured time: the networks timed the same way, on the same images, at the
same batch size, interleaved so that a drift of the machine's speed falls on
all of them alike; one warm-up batch first, CUDA synchronised."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def seconds_per_image(runs: dict[str, Callable[[torch.Tensor], object]], images: torch.Tensor,
                      batch_size: int, repeats: int = 3) -> dict[str, float]:
    """For each named ``run`` (a function of a batch of images): the median over
    ``repeats`` passes over ``images`` in batches of ``batch_size`` of the time
    per image, in seconds."""
    device = images.device
    batches = list(torch.split(images, batch_size))
    for run in runs.values():  # warm-up: allocations, kernel selection, caches
        run(batches[0])
    synchronize(device)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            for batch in batches:
                run(batch)
            synchronize(device)
            seconds[name].append((time.perf_counter() - start) / len(images))
    return {name: statistics.median(values) for name, values in seconds.items()}
