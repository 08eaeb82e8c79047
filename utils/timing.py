"""Measured time: the networks timed the same way, on the same images, at the
same batch size, interleaved batch by batch so that a drift of the machine's
speed falls on all of them alike; one warm-up batch first, CUDA synchronised,
the fastest of a few passes kept (the least disturbed by other work)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def seconds_per_image(runs: dict[str, Callable[[torch.Tensor], object]], images: torch.Tensor,
                      batch_size: int, repeats: int = 3) -> dict[str, float]:
    """For each named ``run`` (a function of a batch of images): the time per
    image, in seconds, of its fastest of ``repeats`` passes over ``images`` in
    batches of ``batch_size``."""
    device = images.device
    batches = list(torch.split(images, batch_size))
    for run in runs.values():  # warm-up: allocations, kernel selection, caches
        run(batches[0])
    synchronize(device)
    passes: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        total = dict.fromkeys(runs, 0.0)
        for batch in batches:
            for name, run in runs.items():
                start = time.perf_counter()
                run(batch)
                synchronize(device)
                total[name] += time.perf_counter() - start
        for name in runs:
            passes[name].append(total[name] / len(images))
    return {name: min(values) for name, values in passes.items()}
