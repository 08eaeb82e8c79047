"""Running on several processes with torchrun: the device (``--device``),
initialisation from the environment torchrun sets, each process's device, "am
I the main process" (``is_main_process``, the one answer), and gathering
per-image values. One process (no torchrun) needs none of it: every
function here then does what a single process would.

    torchrun --nproc_per_node 4 finetune.py ...          # four GPUs of one machine
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 finetune.py ...
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import BlockDropError


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this setup started the process group (a script run by another finds it started)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def choose_device(name: str | None) -> torch.device:
    """``--device``: default CUDA when present, else CPU."""
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise BlockDropError(f"--device {name!r} is not a device ({exc}); use cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BlockDropError(f"--device {name} asked for CUDA but no CUDA GPU is available; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise BlockDropError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device_flag: str | None) -> Processes:
    """One process: the device of ``--device``. Under torchrun: the process group
    (NCCL on GPUs, gloo on CPUs) and this process's device (``cuda:LOCAL_RANK``
    when CUDA is used)."""
    device = choose_device(device_flag)
    if not launched_by_torchrun():
        return Processes(device=device)
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise BlockDropError(f"torchrun: local rank {local} but only {torch.cuda.device_count()} CUDA device(s)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None)
    return Processes(dist.get_rank(), dist.get_world_size(), device, owns)


def teardown(procs: Processes) -> None:
    """The process group ends with the setup that started it (``reproduce.py``
    keeps one for all its steps)."""
    if procs.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    """The main process: rank 0 of the started process group, else of torchrun's
    processes (``RANK``, before the group starts or after it ends), else the one process."""
    if dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def main_print(*args) -> None:
    """``print`` on the main process only (one copy of every log line)."""
    if is_main_process():
        print(*args, flush=True)


def gather_rows(procs: Processes, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every process's rows of each tensor (CPU tensors, the same number of rows
    within a process, possibly not across processes), concatenated in rank order."""
    if not procs.distributed:
        return tensors
    gathered = [None] * procs.world_size
    dist.all_gather_object(gathered, [t.cpu() for t in tensors])
    return tuple(torch.cat([parts[i] for parts in gathered]) for i in range(len(tensors)))


def from_main(value):
    """The main process's ``value`` (any picklable object) on every process of a
    started process group (without one, ``value`` itself): one decision, taken once."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def main_first(procs: Processes, work: Callable[[], object]):
    """``work()`` on the main process while the others wait; its result there
    (None on the others). A BlockDropError it raises is raised on every process."""
    value, error = None, None
    if is_main_process():
        try:
            value = work()
        except BlockDropError as exc:
            if not procs.distributed:
                raise
            error = exc
    message = from_main(str(error) if error else None)
    if error:
        raise error
    if message:
        raise BlockDropError(message)
    return value


def gather_objects(procs: Processes, value) -> list:
    """Every process's ``value``, in rank order."""
    if not procs.distributed:
        return [value]
    out = [None] * procs.world_size
    dist.all_gather_object(out, value)
    return out
