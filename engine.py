"""The training engine: one epoch, and the one training loop that every run
goes through (``pretrain.py``, ``cl_training.py``, ``finetune.py``): each epoch
trains, logs, evaluates when due, and saves the run's state, from which a run
goes on (``--resume``). What differs between them is a *phase* (``Phase``): its
networks, optimizer, batch step, metrics and log lines. The engine knows no network
and no method: BlockDrop's phase, curriculum learning or joint finetuning, is in
``training.py``, its metrics in ``evaluation.py``, the method's math in ``rl.py``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch.optim.lr_scheduler import LambdaLR

from utils.distributed import Processes, gather_objects, gather_rows, is_main_process, main_first, main_print
from utils.errors import BlockDropError, NonFinite
from utils.files import save_args
from utils.logger import RunLogger
from utils.runstate import LAST, FolderLock, RunState, prepare_run_folder, rng_state
from utils.runtime import cuda_devices, first_of_each, progress, set_epoch, to_device, unwrap


# --------------------------------------------------------------------------
# one epoch
# --------------------------------------------------------------------------
def train_one_epoch(train_batch, loader, device: torch.device, layout=torch.contiguous_format,
                    desc: str = "train") -> dict[str, torch.Tensor]:
    """One pass over ``loader`` (batches of images, targets and the images'
    indices); ``train_batch(inputs, targets)`` trains on a batch and returns per-image
    rows. Returns this process's rows and the images' ``index``, in the order trained."""
    rows = defaultdict(list)
    for batch, (inputs, targets, index) in enumerate(progress(loader, desc)):
        inputs, targets = to_device(inputs, device, layout), targets.to(device, non_blocking=True)
        try:
            out = train_batch(inputs, targets)
        except NonFinite as exc:
            raise NonFinite(f"{desc}, batch {batch}: {exc}") from exc
        rows["index"].append(index)
        for key, value in out.items():
            rows[key].append(value.detach().cpu())
    return {key: torch.cat(values) for key, values in rows.items()}


def each_image_once(procs: Processes, rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every process's rows, each image once (a distributed sampler repeats a
    few to even the processes out)."""
    if not procs.distributed:
        return rows
    names = list(rows)
    gathered = dict(zip(names, gather_rows(procs, *(rows[k] for k in names))))
    keep = first_of_each(gathered["index"])
    return {k: v[keep] for k, v in gathered.items()}


# --------------------------------------------------------------------------
# the one training loop
# --------------------------------------------------------------------------
@dataclass
class Run:
    """A training run in progress: its folder, processes, arguments and epochs."""

    cv_dir: Path
    procs: Processes
    args: dict  # the flags, as args.txt and every saved state record them
    first_epoch: int  # the run's first epoch (a resumed run keeps its own)
    start_epoch: int  # the first epoch trained by this invocation
    end_epoch: int  # the last epoch, inclusive
    base: dict | None = None  # the base ResNet trained from: path and SHA-256
    logger: RunLogger | None = None  # on the main process only


class Phase:
    """What one kind of training does; ``train_epochs`` calls these in order.
    ``models`` are the networks that train, saved under their checkpoint keys."""

    models: dict[str, nn.Module]
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    layout: torch.memory_format = torch.contiguous_format  # of the batches (channels-last on CUDA)

    def begin_epoch(self, epoch: int) -> None: ...
    def train_batch(self, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]: ...
    def train_metrics(self, rows: dict[str, torch.Tensor]) -> dict: ...
    def tested(self, epoch: int) -> bool: ...
    def evaluate(self, epoch: int) -> dict: ...
    def log(self, logger: RunLogger, epoch: int, train: dict | None = None, test: dict | None = None) -> None: ...
    def saved_metrics(self, metrics: dict) -> dict: ...
    def checkpoint_name(self, epoch: int, metrics: dict) -> str | None: ...


def train_epochs(run: Run, phase: Phase, loader) -> dict:
    """Epochs ``run.start_epoch`` to ``run.end_epoch``: train, log, check the
    weights, evaluate when due (and always at the last epoch), save the state.
    Returns the last saved checkpoint's metrics and path (``checkpoint``)."""
    last = {"checkpoint": None}
    try:
        for epoch in range(run.start_epoch, run.end_epoch + 1):
            phase.begin_epoch(epoch)
            set_epoch(loader, epoch)
            rows = train_one_epoch(phase.train_batch, loader, run.procs.device, phase.layout, desc=f"epoch {epoch}")
            train = phase.train_metrics(each_image_once(run.procs, rows))
            if run.logger:
                phase.log(run.logger, epoch, train=train)
            check_finite(epoch, phase.models)
            test = evaluate_if_due(run, phase, epoch)
            if run.logger and test is not None:
                phase.log(run.logger, epoch, test=test)
            saved = save_state(run, phase, epoch, test if test is not None else train, tested=test is not None)
            last = saved or last
            phase.schedule.step()
    except NonFinite as exc:
        newest = run.cv_dir / LAST if (run.cv_dir / LAST).exists() else "none (no epoch completed)"
        raise NonFinite(f"{exc}; training stopped, and the newest complete state on disk is {newest}") from exc
    finally:
        if run.logger:
            run.logger.close()
    return last


def begin_run(run: Run, phase: Phase, fresh: bool) -> Run:
    """A new run first saves its state before its first epoch, so that from its
    first file on, a run killed at any moment can be resumed (the folder then
    holds either no run or a run with a saved state); then the main process
    records the arguments and opens the log."""
    if fresh:
        save_state(run, phase, run.start_epoch - 1, {}, tested=False)
    if is_main_process():
        save_args(run.args, run.cv_dir)
        run.logger = RunLogger(run.cv_dir, run.start_epoch)
    return run


def check_finite(epoch: int, models: dict[str, nn.Module]) -> None:
    for what, model in models.items():
        bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            name = {"agent": "agent", "resnet": "ResNet"}.get(what, what)
            raise NonFinite(f"epoch {epoch}: the {name} has weights that are not finite, such as {bad[0]}")


def evaluate_if_due(run: Run, phase: Phase, epoch: int) -> dict | None:
    """The test metrics at a scheduled epoch, and at the last one, whose
    evaluation (an addition to the original's schedule) draws from a forked
    random stream, so that nothing after it changes."""
    if phase.tested(epoch):
        return phase.evaluate(epoch)
    if epoch == run.end_epoch:
        with torch.random.fork_rng(devices=cuda_devices(run.procs.device)):
            return phase.evaluate(epoch)
    return None


def save_state(run: Run, phase: Phase, epoch: int, metrics: dict, tested: bool) -> dict | None:
    """The run's state after ``epoch`` as ``last.t7`` (the main process writes;
    every process gives its random generators); at a tested epoch also as the
    phase's named checkpoint, whose metrics and path are returned."""
    rng = gather_objects(run.procs, rng_state())
    if not is_main_process():
        return None
    state = RunState(epoch=epoch, networks={k: unwrap(m).state_dict() for k, m in phase.models.items()},
                     optimizer=phase.optimizer.state_dict(), args=run.args, rng=rng, first_epoch=run.first_epoch,
                     end_epoch=run.end_epoch, base=run.base, metrics=phase.saved_metrics(metrics))
    name = phase.checkpoint_name(epoch, metrics) if tested else None
    path = state.save(run.cv_dir, name)
    return {**metrics, "epoch": epoch, "checkpoint": str(path)} if name else None


# --------------------------------------------------------------------------
# a run's folder, and where a resumed run goes on
# --------------------------------------------------------------------------
@dataclass
class Resumed:
    """The run continued by ``--resume``: its newest complete state, and the file it was read from."""

    path: Path
    state: RunState

    def announce(self, cv_dir: Path) -> None:
        state = self.state
        when = f"after epoch {state.epoch}" if state.epoch >= state.first_epoch else "before its first epoch"
        main_print(f"resuming the run in {cv_dir} {when} ({self.path.name})")


def open_run_folder(cv_dir: Path, script: str, procs: Processes, stack: ExitStack, resume: bool, restart: bool,
                    continuing: bool = False, files: list[Path] | None = None) -> tuple[Resumed | None, FolderLock | None]:
    """The run folder checked and held for this run until ``stack`` closes (by
    the main process, whose lock is returned; the others wait for it; see
    ``prepare_run_folder``) and, with ``--resume``, the run's newest state,
    checked to be one of ``script``'s runs."""
    lock = main_first(procs, lambda: prepare_run_folder(cv_dir, resume, restart, continuing, files))
    if lock:
        stack.push(lock.exit)
    if not resume:
        return None, lock
    path, state = RunState.newest(cv_dir)
    state.check_script(script, path)
    return Resumed(path, state), lock


def restored_schedule(optimizer: torch.optim.Optimizer, saved: dict | None, source: Path | None, lr: float,
                      factor: Callable[[int], float], last_epoch: int) -> LambdaLR:
    """The optimizer's state restored from the run or checkpoint continued
    (``saved``, read from ``source``), its rate reset to ``lr``, and the
    schedule ``lr * factor(t)`` from after ``last_epoch``. A LambdaLR of the
    scripts' formulas, not StepLR or MultiStepLR: those multiply the rate step
    by step, which differs from the formula in the last bit after two decays."""
    if isinstance(saved, dict):
        try:
            optimizer.load_state_dict(saved)
        except (ValueError, KeyError) as exc:
            raise BlockDropError(f"{source}: its optimizer state does not fit this run ({exc}); "
                                 "it was saved by a run of other networks or another phase") from exc
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = lr
    return LambdaLR(optimizer, factor, last_epoch=last_epoch)
