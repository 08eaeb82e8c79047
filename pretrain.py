"""Train the base ResNet of a configuration, the starting point of BlockDrop.

    python pretrain.py --model R32_C10

The standard CIFAR recipe (He et al. 2016): SGD with momentum 0.9, weight
decay 1e-4, lr 0.1 divided by 10 at epochs 81 and 122, 164 epochs, on the same
data pipeline as BlockDrop. Writes ``cv/pretrained/<model>/pk_E_<epoch>_A_<acc>.t7``
in the standard layout (``{"state_dict": {"conv1.weight", "layer1.0...", ...}}``),
which ``cl_training.py`` and ``finetune.py`` pick up by default.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DistributedSampler

from engine import (
    amp_dtype,
    autocast,
    backward_and_step,
    data_loaders,
    first_of_each,
    memory_format,
    predict,
    to_device,
)
from models import BlockDrop, build_resnet, get_config, to_standard_keys
from utils.checkpoints import (
    PRETRAINED_DIR,
    base_checkpoint_name,
    save_args,
    save_checkpoint,
    writable_folder,
)
from utils.cli import (
    ArgumentParser,
    add_device_flag,
    add_model_flag,
    add_throughput_flags,
    finite_float,
    nonnegative_int,
    positive_float,
    positive_int,
    progress,
    run_cli,
    seed_everything,
)
from utils.data import get_datasets
from utils.distributed import Processes, gather_rows, main_print, setup, teardown


def get_args_parser() -> ArgumentParser:
    p = ArgumentParser(prog="pretrain.py", description="train a base ResNet for BlockDrop")
    add_model_flag(p, "R32_C10")
    p.add_argument("--data_dir", default="data/", help="data set folder")
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
    add_throughput_flags(p)
    return p


def lr_factor(args: argparse.Namespace, epoch: int) -> float:
    """The learning rate at 1-based ``epoch`` over ``--lr``: 1/10 during the
    warm-up, then divided by ``lr_decay`` at each milestone passed."""
    if epoch <= args.warmup:
        return 0.1
    return 1 / args.lr_decay ** sum(epoch >= m for m in args.milestones)


def main(args: argparse.Namespace) -> Path:
    procs = setup(args.device)
    try:
        return train_base(args, procs)
    finally:
        teardown(procs)


def train_base(args: argparse.Namespace, procs: Processes) -> Path:
    from torch.utils.tensorboard import SummaryWriter  # slow to import: only where training logs

    cfg = get_config(args.model)
    device = procs.device
    seed_everything(args.seed)
    cv_dir = Path(args.cv_dir) if args.cv_dir else PRETRAINED_DIR / cfg.name
    if procs.is_main:
        writable_folder(cv_dir, "--cv_dir")
    trainset, testset = get_datasets(cfg, args.data_dir)
    trainloader, testloader = data_loaders(trainset, testset, procs, args.batch_size, args.workers, args.seed,
                                           test_batch_size=256)
    layout = memory_format(args, device)
    precision = amp_dtype(args, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    resnet = build_resnet(cfg).to(device, memory_format=layout)
    model = DDP(resnet, device_ids=[device.index] if device.type == "cuda" else None) if procs.distributed else resnet
    optimizer = torch.optim.SGD(resnet.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.wd)
    schedule = LambdaLR(optimizer, lambda epoch: lr_factor(args, epoch + 1))  # its epochs count from 0
    scaler = torch.amp.GradScaler("cuda") if precision == torch.float16 else None
    writer = None
    if procs.is_main:
        save_args({**vars(args), "processes": procs.world_size}, cv_dir)
        writer = SummaryWriter(str(cv_dir / "log"))
    acc = 0.0
    try:
        for epoch in range(1, args.epochs + 1):
            lr = optimizer.param_groups[0]["lr"]
            if isinstance(trainloader.sampler, DistributedSampler):
                trainloader.sampler.set_epoch(epoch)
            model.train()
            rows = {"index": [], "loss": [], "correct": []}
            for inputs, targets, index in progress(trainloader, f"epoch {epoch}"):
                inputs, targets = to_device(inputs, device, layout), targets.to(device)
                with autocast(device, precision):
                    logits = model(inputs)
                logits = logits.float()
                loss = F.cross_entropy(logits, targets)
                optimizer.zero_grad(set_to_none=True)
                backward_and_step(loss, optimizer, scaler)
                rows["index"].append(index)
                rows["loss"].append(F.cross_entropy(logits.detach(), targets, reduction="none").cpu())
                rows["correct"].append((logits.argmax(1) == targets).cpu())
            schedule.step()
            index, losses, correct = gather_rows(procs, *(torch.cat(rows[k]) for k in ("index", "loss", "correct")))
            keep = first_of_each(index)  # each image once
            tested = predict(BlockDrop(None, resnet), testloader, device, amp=precision, memory_format=layout)
            acc = gather_rows(procs, tested["correct"])[0].double().mean().item()
            row = {"epoch": epoch, "lr": lr, "train_loss": losses[keep].double().mean().item(),
                   "train_accuracy": correct[keep].double().mean().item(), "test_accuracy": acc}
            main_print(f"E: {epoch} | L: {row['train_loss']:.4f} | A: {row['train_accuracy']:.3f} | "
                       f"TS: {acc:.3f} | lr: {lr:.2E}")
            if writer:
                for key in ("train_loss", "train_accuracy", "test_accuracy", "lr"):
                    writer.add_scalar(key, row[key], epoch)
                with open(cv_dir / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps(row) + "\n")
    finally:
        if writer:
            writer.close()

    path = cv_dir / base_checkpoint_name(args.epochs, acc)
    if procs.is_main:
        save_checkpoint({"state_dict": to_standard_keys(resnet.state_dict()), "epoch": args.epochs,
                         "acc": acc, "model": cfg.name}, path)
        main_print(f"saved {path}")
    return path


if __name__ == "__main__":
    run_cli(main, get_args_parser())
