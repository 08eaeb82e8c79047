"""How a run runs, decided once: the seed (``--seed``), mixed precision
(``--amp``), the memory format (``--memory_format``), data loaders (pinned,
persistent, sharded under torchrun), the progress bar, and the wrapping of the
networks for several GPUs. Of the hardware's settings, only ``--amp`` changes
a run on the CPU. The device and the processes are ``utils.distributed``'s."""

from __future__ import annotations

import random
import sys

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, Subset

from .distributed import Processes, is_main_process, main_print


def seed_everything(seed: int | None) -> None:
    """``--seed``: Python's, numpy's and torch's generators (not seeded: None)."""
    if seed is None:
        return
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def progress(iterable, desc: str):
    """A progress bar on a terminal and on the main process; nothing in a log
    file, where every refresh would be one more line."""
    from tqdm import tqdm  # only where a loop shows one

    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True,
                disable=not (is_main_process() and sys.stderr.isatty()))


# --------------------------------------------------------------------------
# precision and memory format
# --------------------------------------------------------------------------
def amp_dtype(amp: bool, device: torch.device) -> torch.dtype | None:
    """``--amp``: bfloat16 autocast, on CUDA where the GPU has it (else float16,
    with a gradient scaler) and on the CPU (an opt-in: it draws other numbers
    than a float32 run, so a seeded run no longer follows the original's)."""
    if not amp:
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def grad_scaler(precision: torch.dtype | None) -> torch.amp.GradScaler | None:
    """float16 needs its loss scaled against underflow; bfloat16 and float32 do not."""
    return torch.amp.GradScaler("cuda") if precision == torch.float16 else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision for the networks' forward passes, or nothing."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def backward_and_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                      scaler: torch.amp.GradScaler | None = None) -> None:
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def channels_layout(name: str, device: torch.device) -> torch.memory_format:
    """``--memory_format``: channels-last helps convolutions on GPUs; ``auto`` uses it on CUDA only."""
    if name == "auto":
        name = "channels_last" if device.type == "cuda" else "contiguous"
    return torch.channels_last if name == "channels_last" else torch.contiguous_format


def to_device(inputs: torch.Tensor, device: torch.device, layout=torch.contiguous_format) -> torch.Tensor:
    return inputs.to(device, non_blocking=True).contiguous(memory_format=layout)


def cuda_devices(device: torch.device) -> list[int]:
    """The devices whose random streams ``torch.random.fork_rng`` must set aside."""
    return [device.index or 0] if device.type == "cuda" else []


# --------------------------------------------------------------------------
# data loaders
# --------------------------------------------------------------------------
def data_loaders(trainset, testset, procs: Processes, batch_size: int, workers: int, seed: int | None,
                 test_batch_size: int | None = None, device_data: bool = False) -> tuple[DataLoader, DataLoader]:
    """Batches of (images, targets, the images' indices). One process shuffles
    as the original does; under torchrun a DistributedSampler gives each process
    its share of a shuffle seeded by ``--seed`` and the epoch (``set_epoch``),
    and the test set is dealt out image by image, with no image repeated.
    ``batch_size`` is per process. On CUDA the batches are pinned and the
    workers persist across epochs. ``device_data`` (``--device_data``): the
    data sets held on the device, shuffled and augmented there in whole
    batches (``utils.device_data``), with the same batches' sizes and shares."""
    if device_data:
        from .device_data import device_loaders  # the transforms: not needed by the method's step

        return device_loaders(trainset, testset, procs, batch_size, seed, test_batch_size)
    from .data import WithIndex  # the data sets' module, which the method's step does not need

    trainset, testset = WithIndex(trainset), WithIndex(testset)
    cuda = procs.device.type == "cuda"
    extra = {"num_workers": workers, "pin_memory": cuda, "persistent_workers": cuda and workers > 0}
    test_batch_size = test_batch_size or batch_size
    if not procs.distributed:
        return (DataLoader(trainset, batch_size=batch_size, shuffle=True, **extra),
                DataLoader(testset, batch_size=test_batch_size, shuffle=False, **extra))
    sampler = DistributedSampler(trainset, num_replicas=procs.world_size, rank=procs.rank, shuffle=True,
                                 seed=seed or 0)
    share = Subset(testset, range(procs.rank, len(testset), procs.world_size))
    return (DataLoader(trainset, batch_size=batch_size, sampler=sampler, **extra),
            DataLoader(share, batch_size=test_batch_size, shuffle=False, **extra))


def set_epoch(loader, epoch: int) -> None:
    """A distributed sampler (and ``--device_data``'s loader under torchrun) shuffles by ``--seed`` and the epoch."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    elif isinstance(getattr(loader, "sampler", None), DistributedSampler):
        loader.sampler.set_epoch(epoch)


def first_of_each(index: torch.Tensor) -> torch.Tensor:
    """Positions of the first occurrence of each index, in order of the indices
    (a distributed sampler repeats a few images to even the processes out)."""
    _, first = np.unique(index.numpy(), return_index=True)
    return torch.from_numpy(np.sort(first))


# --------------------------------------------------------------------------
# several GPUs
# --------------------------------------------------------------------------
def parallelize(procs: Processes, parallel: bool, trained: list[nn.Module],
                frozen: list[nn.Module] = ()) -> list[nn.Module]:
    """The networks, ``trained`` then ``frozen``, wrapped for several devices.
    Under torchrun, DistributedDataParallel for the ones that train (a frozen
    one runs as it is). Blocks that no image of a process's batch keeps, and the
    value head the loss never uses, leave parameters without a gradient on that
    process: ``find_unused_parameters`` lets DDP still average the others, and
    leaves the gradient of a parameter unused on every process untouched (as one
    process would). ``--parallel``: nn.DataParallel over this machine's GPUs for
    all of them, as the original did."""
    models = [*trained, *frozen]
    if procs.distributed:
        ids = [procs.device.index] if procs.device.type == "cuda" else None
        return [DDP(m, device_ids=ids, find_unused_parameters=True) for m in trained] + list(frozen)
    if not parallel:
        return models
    if procs.device.type == "cuda" and torch.cuda.device_count() > 1:
        return [nn.DataParallel(m) for m in models]
    main_print(f"note: --parallel needs 2 or more CUDA GPUs; running on {procs.device}")
    return models


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside nn.DataParallel or DistributedDataParallel: checkpoints hold no ``module.`` prefix."""
    return model.module if isinstance(model, (nn.DataParallel, DDP)) else model
