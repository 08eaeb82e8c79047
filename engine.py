"""The training engine: one epoch, prediction and evaluation, and the one
training loop that every run goes through (``pretrain.py``, ``cl_training.py``,
``finetune.py``): each epoch trains, logs, evaluates when due, and saves the
run's state. What differs between them is a *phase* (``Phase``): its networks,
optimizer, step, figures and log lines. BlockDrop's own phase, curriculum
learning or joint finetuning, is in ``training.py``; the method's math in ``rl.py``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from models import BlockDrop
from rl import reward
from utils.checkpoints import unwrap
from utils.distributed import Processes, gather_objects, gather_rows, is_main_process
from utils.errors import NonFinite
from utils.files import save_args
from utils.logger import RunLogger
from utils.runstate import LAST, RunState, rng_state
from utils.runtime import autocast, cuda_devices, first_of_each, progress, set_epoch, to_device


# --------------------------------------------------------------------------
# one epoch, and its figures
# --------------------------------------------------------------------------
def train_one_epoch(step, loader, device: torch.device, layout=torch.contiguous_format,
                    desc: str = "train") -> dict[str, torch.Tensor]:
    """One pass over ``loader`` (batches of images, targets and the images'
    indices); ``step(inputs, targets)`` trains on a batch and returns per-image
    rows. Returns this process's rows and the images' ``index``, in the order trained."""
    rows = defaultdict(list)
    for batch, (inputs, targets, index) in enumerate(progress(loader, desc)):
        inputs, targets = to_device(inputs, device, layout), targets.to(device, non_blocking=True)
        try:
            out = step(inputs, targets)
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


def policy_stats(policies: torch.Tensor) -> dict:
    """Mean and sample std (n - 1) of blocks used per image, and the number of
    distinct policies. In float32, as the original computes them, so that the
    printed figures agree to the last digit (one image has no spread: 0)."""
    used = policies.float().sum(1)
    std = used.std().item() if len(used) > 1 else 0.0
    unique = len(torch.unique(policies.to(torch.int8), dim=0)) if len(policies) else 0
    return {"blocks": used.mean().item(), "blocks_std": std, "unique": unique}


def summarize(correct: torch.Tensor, rewards: torch.Tensor, policies: torch.Tensor) -> dict:
    return {"acc": correct.mean().item(), "reward": rewards.mean().item(), **policy_stats(policies),
            "images": len(policies)}


# --------------------------------------------------------------------------
# prediction: the one evaluation loop
# --------------------------------------------------------------------------
@torch.no_grad()
def predict(model: BlockDrop, loader, device: torch.device, learned: int | None = None,
            desc: str = "test", amp: torch.dtype | None = None, layout=torch.contiguous_format) -> dict:
    """The greedy policy and the prediction of every image of ``loader``, in
    order, in eval mode. Returns CPU tensors: ``policies`` N x K (0/1 floats),
    ``preds`` N, ``targets`` N, ``correct`` N (bool), and ``index`` N when the
    loader gives the images' indices."""
    model.eval()
    policies, preds, targets, indices = [], [], [], []
    for inputs, target, *index in progress(loader, desc):
        with autocast(device, amp):
            logits, policy = model(to_device(inputs, device, layout), learned)
        policies.append(policy.float().cpu())
        preds.append(logits.argmax(1).cpu())
        targets.append(target)
        indices += index
    policies, preds, targets = torch.cat(policies), torch.cat(preds), torch.cat(targets)
    out = {"policies": policies, "preds": preds, "targets": targets, "correct": preds == targets}
    return {**out, "index": torch.cat(indices)} if indices else out


def evaluate(agent: nn.Module, resnet: nn.Module, loader, device: torch.device, learned: int, penalty: float,
             desc: str = "test", procs: Processes | None = None, amp: torch.dtype | None = None,
             layout=torch.contiguous_format) -> dict:
    """Greedy policy (with the curriculum's forced-on prefix) on the test set:
    accuracy, mean reward, blocks used and unique policies. Under torchrun each
    process evaluates its share and the figures are those of all the images, in
    the data set's order: the same as one process's."""
    procs = procs or Processes(device=device)
    out = predict(BlockDrop(agent, resnet), loader, device, learned, desc, amp, layout)
    index, policies, preds, targets = gather_rows(procs, out["index"], out["policies"], out["preds"], out["targets"])
    order = index.argsort()
    policies, preds, targets = policies[order], preds[order], targets[order]
    rewards, correct = reward(preds, targets, policies, penalty)
    return summarize(correct, rewards, policies)


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
    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]: ...
    def train_figures(self, rows: dict[str, torch.Tensor]) -> dict: ...
    def tested(self, epoch: int) -> bool: ...
    def evaluate(self, epoch: int) -> dict: ...
    def log(self, logger: RunLogger, epoch: int, train: dict | None = None, test: dict | None = None) -> None: ...
    def saved_figures(self, figures: dict) -> dict: ...
    def checkpoint_name(self, epoch: int, figures: dict) -> str | None: ...


def train_epochs(run: Run, phase: Phase, loader) -> dict:
    """Epochs ``run.start_epoch`` to ``run.end_epoch``: train, log, check the
    weights, evaluate when due (and always at the last epoch), save the state.
    Returns the last saved checkpoint's figures and path (``checkpoint``)."""
    last = {"checkpoint": None}
    try:
        for epoch in range(run.start_epoch, run.end_epoch + 1):
            phase.begin_epoch(epoch)
            set_epoch(loader, epoch)
            rows = train_one_epoch(phase.step, loader, run.procs.device, phase.layout, desc=f"epoch {epoch}")
            train = phase.train_figures(each_image_once(run.procs, rows))
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
    """The test figures at a scheduled epoch, and at the last one, whose
    evaluation (an addition to the original's schedule) draws from a forked
    random stream, so that nothing after it changes."""
    if phase.tested(epoch):
        return phase.evaluate(epoch)
    if epoch == run.end_epoch:
        with torch.random.fork_rng(devices=cuda_devices(run.procs.device)):
            return phase.evaluate(epoch)
    return None


def save_state(run: Run, phase: Phase, epoch: int, figures: dict, tested: bool) -> dict | None:
    """The run's state after ``epoch`` as ``last.t7`` (the main process writes;
    every process gives its random generators); at a tested epoch also as the
    phase's named checkpoint, whose figures and path are returned."""
    rng = gather_objects(run.procs, rng_state())
    if not is_main_process():
        return None
    state = RunState(epoch=epoch, networks={k: unwrap(m).state_dict() for k, m in phase.models.items()},
                     optimizer=phase.optimizer.state_dict(), args=run.args, rng=rng, first_epoch=run.first_epoch,
                     end_epoch=run.end_epoch, base=run.base, figures=phase.saved_figures(figures))
    name = phase.checkpoint_name(epoch, figures) if tested else None
    path = state.save(run.cv_dir, name)
    return {**figures, "epoch": epoch, "checkpoint": str(path)} if name else None
