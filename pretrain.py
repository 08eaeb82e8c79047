"""Train the base ResNet of a configuration, the starting point of BlockDrop.

    python pretrain.py --model R32_C10

The standard CIFAR recipe (He et al. 2016): SGD with momentum 0.9, weight
decay 1e-4, lr 0.1 divided by 10 at epochs 81 and 122, 164 epochs, on the same
data pipeline as BlockDrop. Writes ``cv/pretrained/<model>/pk_E_<epoch>_A_<acc>.t7``
in the standard layout (``{"state_dict": {"conv1.weight", "layer1.0...", ...}}``),
which ``cl_training.py`` and ``finetune.py`` pick up by default. It runs on the
engine's training loop: the run's state after every epoch in ``last.t7``,
``--resume`` and ``--restart`` as in the other training scripts.
"""

from __future__ import annotations

import argparse
from contextlib import ExitStack
from pathlib import Path

import torch
import torch.nn.functional as F

from engine import Phase, Resumed, Run, begin_run, open_run_folder, restored_schedule, train_epochs
from evaluation import predict
from models import BlockDrop, build_resnet, get_config, to_standard_keys
from utils.bases import PRETRAINED_DIR, base_checkpoint_name, load_weights
from utils.cli import (
    ArgumentParser,
    add_device_data_flag,
    add_device_flag,
    add_model_flag,
    add_run_folder_flags,
    add_subset_flag,
    add_throughput_flags,
    finite_float,
    nonnegative_int,
    positive_float,
    positive_int,
    run_cli,
)
from utils.config import HARDWARE
from utils.data import get_datasets
from utils.device_data import check_device_data
from utils.distributed import Processes, gather_rows, is_main_process, main_print, setup, teardown
from utils.errors import BlockDropError
from utils.files import save_checkpoint
from utils.runstate import LAST, FolderLock, RunState
from utils.runtime import (
    amp_dtype,
    autocast,
    backward_and_step,
    channels_layout,
    data_loaders,
    grad_scaler,
    parallelize,
    seed_everything,
)

# Flags that may differ when a run is resumed (--epochs extends it).
RESUMABLE = HARDWARE | {"epochs"}


def get_args_parser() -> ArgumentParser:
    p = ArgumentParser(prog="pretrain.py", description="train a base ResNet for BlockDrop")
    add_model_flag(p, "R32_C10")
    p.add_argument("--data_dir", default="data/", help="data set folder")
    add_subset_flag(p)
    p.add_argument("--cv_dir", default=None, help="output folder (default: cv/pretrained/<model>/)")
    p.add_argument("--lr", type=positive_float, default=0.1, help="initial learning rate")
    p.add_argument("--momentum", type=finite_float, default=0.9, help="SGD momentum")
    p.add_argument("--wd", type=finite_float, default=1e-4, help="weight decay")
    p.add_argument("--batch_size", type=positive_int, default=128, help="batch size")
    p.add_argument("--epochs", type=positive_int, default=164, help="epochs")
    p.add_argument("--milestones", type=positive_int, nargs="*", default=[81, 122],
                   help="epochs at which the learning rate is divided by --lr_decay")
    p.add_argument("--lr_decay", type=finite_float, default=10.0,
                   help="divisor of the learning rate at each milestone")
    p.add_argument("--warmup", type=nonnegative_int, default=0,
                   help="epochs at lr/10 first (He et al. do 1 for ResNet-110)")
    add_device_flag(p)
    p.add_argument("--seed", type=int, default=None, help="random seed (default: not seeded)")
    p.add_argument("--workers", type=nonnegative_int, default=4, help="data loader workers")
    p.add_argument("--test_every", type=positive_int, default=1,
                   help="evaluate on the test set every N epochs, and always at the last (default: every epoch)")
    add_throughput_flags(p)
    add_device_data_flag(p)
    add_run_folder_flags(p, resumable="--epochs (a larger value extends the run), --workers, --device, --amp and "
                                      "--memory_format")
    return p


def lr_factor(args: argparse.Namespace, epoch: int) -> float:
    """The learning rate at 1-based ``epoch`` over ``--lr``: 1/10 during the
    warm-up, then divided by ``lr_decay`` at each milestone passed. A LambdaLR
    of this formula: MultiStepLR multiplies step by step, which differs from it
    in the last bit after the second milestone."""
    if epoch <= args.warmup:
        return 0.1
    return 1 / args.lr_decay ** sum(epoch >= m for m in args.milestones)


class BasePhase(Phase):
    """Supervised training of the base ResNet: SGD on the cross-entropy, the
    test accuracy every ``test_every`` epochs and at the last, one log line per epoch."""

    def __init__(self, resnet, procs: Processes, testloader, layout, precision, optimizer, schedule,
                 test_every: int = 1, last_epoch: int = 0):
        self.models, self.procs, self.testloader, self.layout = {"resnet": resnet}, procs, testloader, layout
        self.test_every, self.last_epoch = test_every, last_epoch
        self.optimizer, self.schedule = optimizer, schedule
        self.model = parallelize(procs, False, [resnet])[0]
        self.precision, self.scaler = precision, grad_scaler(precision)
        self.lr, self.metrics = optimizer.param_groups[0]["lr"], {}  # the last epoch's, saved with the state

    def begin_epoch(self, epoch: int) -> None:
        self.lr = self.optimizer.param_groups[0]["lr"]
        self.model.train()

    def train_batch(self, inputs, targets):
        with autocast(inputs.device, self.precision):
            logits = self.model(inputs)
        logits = logits.float()
        loss = F.cross_entropy(logits, targets)
        self.optimizer.zero_grad(set_to_none=True)
        backward_and_step(loss, self.optimizer, self.scaler)
        return {"loss": F.cross_entropy(logits.detach(), targets, reduction="none"),
                "correct": logits.argmax(1) == targets}

    def train_metrics(self, rows):
        self.metrics = {"train_loss": rows["loss"].double().mean().item(),
                        "train_accuracy": rows["correct"].double().mean().item()}
        return self.metrics

    def tested(self, epoch: int) -> bool:
        return epoch % self.test_every == 0

    def evaluate(self, epoch: int) -> dict:
        tested = predict(BlockDrop(None, self.models["resnet"]), self.testloader, self.procs.device,
                         amp=self.precision, layout=self.layout)
        acc = gather_rows(self.procs, tested["correct"])[0].double().mean().item()
        self.metrics = {**self.metrics, "acc": acc, "test_accuracy": acc}
        return self.metrics

    def log(self, logger, epoch, train=None, test=None):
        if test is None and (self.tested(epoch) or epoch == self.last_epoch):
            return  # one line per epoch, with the test accuracy when it is measured
        row = {"epoch": epoch, "lr": self.lr, **{k: v for k, v in (test or train).items() if k != "acc"}}
        tested = f"TS: {row['test_accuracy']:.3f} | " if test else ""
        logger.log(epoch, f"E: {epoch} | L: {row['train_loss']:.4f} | A: {row['train_accuracy']:.3f} | "
                          f"{tested}lr: {self.lr:.2E}",
                   {k: row[k] for k in ("train_loss", "train_accuracy", "test_accuracy", "lr") if k in row}, row)

    def saved_metrics(self, metrics: dict) -> dict:
        return metrics

    def checkpoint_name(self, epoch: int, metrics: dict) -> None:
        return None  # last.t7 every epoch; the base itself when the run ends


def main(args: argparse.Namespace) -> Path:
    procs = setup(args.device)
    try:
        with ExitStack() as stack:
            return train_base(args, procs, stack)
    finally:
        teardown(procs)


def open_folder(args: argparse.Namespace, procs: Processes,
                stack: ExitStack) -> tuple[Resumed | None, FolderLock | None]:
    """The run folder held for this run (``engine.open_run_folder``; an earlier
    run is set aside with the base it wrote) and, with ``--resume``, the run's
    newest state, whose flags then replace ``args``'s."""
    cv_dir = Path(args.cv_dir)
    resumed, lock = open_run_folder(cv_dir, "pretrain.py", procs, stack, args.resume, args.restart,
                                    files=[] if args.resume else finished_base(cv_dir))
    if resumed:
        flags = {k: v for k, v in vars(args).items() if not k.startswith("_")}
        given = getattr(args, "_given", frozenset())
        vars(args).update(resumed.state.continued_flags(flags, given, RESUMABLE, resumed.path))
        resumed.announce(cv_dir)
    return resumed, lock


def finished_base(cv_dir: Path) -> list[Path]:
    """The base that the run in ``cv_dir`` wrote when it ended, if there is one."""
    try:
        _, state = RunState.newest(cv_dir)
    except BlockDropError:
        return []
    path = cv_dir / base_checkpoint_name(state.epoch, state.metrics.get("acc", -1.0))
    return [path] if state.epoch == state.end_epoch and path.is_file() else []


def train_base(args: argparse.Namespace, procs: Processes, stack: ExitStack) -> Path:
    args.cv_dir = str(args.cv_dir or PRETRAINED_DIR / args.model)
    data = None if args.resume else get_datasets(get_config(args.model), args.data_dir, args.train_subset)
    if data and args.device_data:  # checked before any file moves
        check_device_data(*data)
    resumed, lock = open_folder(args, procs, stack)
    state = resumed.state if resumed else None
    config = get_config(args.model)
    resnet = build_resnet(config) if state else None
    if state:
        load_weights(resnet, state.networks["resnet"], resumed.path, f"{config.name} ResNet")
        if state.epoch >= args.epochs:
            main_print(f"the run in {args.cv_dir} is complete (its last epoch, {state.epoch}, is done): "
                       "nothing to train")
            return save_base(Path(args.cv_dir), procs, state.epoch, config, resnet, state.metrics["acc"], False)
    seed_everything(args.seed)
    trainset, testset = data or get_datasets(config, args.data_dir, args.train_subset)
    trainloader, testloader = data_loaders(trainset, testset, procs, args.batch_size, args.workers, args.seed,
                                           test_batch_size=256, device_data=args.device_data)
    layout = channels_layout(args.memory_format, procs.device)
    if procs.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if resnet is None:
        resnet = build_resnet(config)
    resnet.to(procs.device, memory_format=layout)
    optimizer, schedule = make_optimizer(args, resnet, state, resumed.path if resumed else None)
    phase = BasePhase(resnet, procs, testloader, layout, amp_dtype(args.amp, procs.device), optimizer, schedule,
                      args.test_every, args.epochs)
    start = state.epoch + 1 if state else 1
    flags = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    run = Run(Path(args.cv_dir), procs, {**flags, "processes": procs.world_size}, 1, start, args.epochs)
    if state:
        state.restore_rng(procs.rank, procs.world_size)
        phase.metrics = state.metrics
    if lock:  # every check passed: an earlier run is set aside only now
        lock.begin()
    train_epochs(begin_run(run, phase, fresh=state is None), phase, trainloader)
    return save_base(run.cv_dir, procs, args.epochs, config, resnet, phase.metrics["acc"], trained=True)


def make_optimizer(args: argparse.Namespace, resnet, resumed: RunState | None, source: Path | None):
    """SGD with momentum and weight decay, its state restored when resuming, and
    the schedule of ``lr_factor`` from the epoch the run goes on at."""
    optimizer = torch.optim.SGD(resnet.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.wd)
    start = resumed.epoch + 1 if resumed else 1
    schedule = restored_schedule(optimizer, resumed.optimizer if resumed else None, source, args.lr,
                                 lambda t: lr_factor(args, t + 1), start - 2)  # t counts from 0
    return optimizer, schedule


def save_base(cv_dir: Path, procs: Processes, epochs: int, config, resnet, acc: float, trained: bool) -> Path:
    """The trained base, in the standard layout, as ``pk_E_<epochs>_A_<acc>.t7``
    (``acc``: the last test accuracy). A file of that name that this run did not
    write is never replaced."""
    path = cv_dir / base_checkpoint_name(epochs, acc)
    if is_main_process():
        if path.exists() and trained:
            raise BlockDropError(f"{path} exists and was not written by this run; the trained network is in "
                                 f"{cv_dir / LAST}: move {path.name} away and run again with --resume")
        if not path.exists():
            save_checkpoint({"state_dict": to_standard_keys(resnet.state_dict()), "epoch": epochs,
                             "acc": acc, "model": config.name}, path)
        main_print(f"saved {path}")
    return path


if __name__ == "__main__":
    run_cli(main, get_args_parser())
