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
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader

from engine import predict
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
    choose_device,
    finite_float,
    nonnegative_int,
    positive_float,
    positive_int,
    progress,
    run_cli,
    seed_everything,
)
from utils.data import get_datasets


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
    return p


def lr_factor(args: argparse.Namespace, epoch: int) -> float:
    """The learning rate at 1-based ``epoch`` over ``--lr``: 1/10 during the
    warm-up, then divided by ``lr_decay`` at each milestone passed."""
    if epoch <= args.warmup:
        return 0.1
    return 1 / args.lr_decay ** sum(epoch >= m for m in args.milestones)


def main(args: argparse.Namespace) -> Path:
    from torch.utils.tensorboard import SummaryWriter  # slow to import: only where training logs

    cfg = get_config(args.model)
    device = choose_device(args.device)
    seed_everything(args.seed)
    cv_dir = writable_folder(Path(args.cv_dir) if args.cv_dir else PRETRAINED_DIR / cfg.name, "--cv_dir")
    trainset, testset = get_datasets(cfg, args.data_dir)
    pin = device.type == "cuda"
    trainloader = DataLoader(trainset, batch_size=args.batch_size, shuffle=True,
                             num_workers=args.workers, pin_memory=pin)
    testloader = DataLoader(testset, batch_size=256, shuffle=False, num_workers=args.workers,
                            pin_memory=pin)

    resnet = build_resnet(cfg).to(device)
    optimizer = torch.optim.SGD(resnet.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.wd)
    schedule = LambdaLR(optimizer, lambda epoch: lr_factor(args, epoch + 1))  # its epochs count from 0
    save_args(vars(args), cv_dir)
    writer = SummaryWriter(str(cv_dir / "log"))
    acc = 0.0
    try:
        for epoch in range(1, args.epochs + 1):
            lr = optimizer.param_groups[0]["lr"]
            resnet.train()
            loss_sum = correct = seen = 0
            for inputs, targets in progress(trainloader, f"epoch {epoch}"):
                inputs, targets = inputs.to(device), targets.to(device)
                logits = resnet(inputs)
                loss = F.cross_entropy(logits, targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.item() * len(targets)
                correct += (logits.argmax(1) == targets).sum().item()
                seen += len(targets)
            schedule.step()
            acc = predict(BlockDrop(None, resnet), testloader, device)["correct"].double().mean().item()
            row = {"epoch": epoch, "lr": lr, "train_loss": loss_sum / seen,
                   "train_accuracy": correct / seen, "test_accuracy": acc}
            print(f"E: {epoch} | L: {row['train_loss']:.4f} | A: {row['train_accuracy']:.3f} | "
                  f"TS: {acc:.3f} | lr: {lr:.2E}", flush=True)
            for key in ("train_loss", "train_accuracy", "test_accuracy", "lr"):
                writer.add_scalar(key, row[key], epoch)
            with open(cv_dir / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")
    finally:
        writer.close()

    path = cv_dir / base_checkpoint_name(args.epochs, acc)
    save_checkpoint({"state_dict": to_standard_keys(resnet.state_dict()), "epoch": args.epochs,
                     "acc": acc, "model": cfg.name}, path)
    print(f"saved {path}")
    return path


if __name__ == "__main__":
    run_cli(main, get_args_parser())
