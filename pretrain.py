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
from torch.utils.data import DataLoader
from tqdm import tqdm

from models import build_resnet, get_config
from utils import (
    PRETRAINED_DIR,
    ArgumentParser,
    BlockDropError,
    base_checkpoint_name,
    choose_device,
    get_datasets,
    run_cli,
    save_args,
    save_checkpoint,
    seed_everything,
    to_standard_keys,
)


def get_args_parser() -> ArgumentParser:
    p = ArgumentParser(prog="pretrain.py", description="train a base ResNet for BlockDrop")
    p.add_argument("--model", default="R32_C10", help="R<depth>_<dataset>")
    p.add_argument("--data_dir", default="data/", help="data set folder")
    p.add_argument("--cv_dir", default=None, help="output folder (default: cv/pretrained/<model>/)")
    p.add_argument("--lr", type=float, default=0.1, help="initial learning rate")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--wd", type=float, default=1e-4, help="weight decay")
    p.add_argument("--batch_size", type=int, default=128, help="batch size")
    p.add_argument("--epochs", type=int, default=164, help="epochs")
    p.add_argument("--milestones", type=int, nargs="*", default=[81, 122],
                   help="epochs at which the learning rate is divided by --lr_decay")
    p.add_argument("--lr_decay", type=float, default=10.0, help="divisor of the learning rate at each milestone")
    p.add_argument("--warmup", type=int, default=0,
                   help="epochs at lr/10 first (He et al. do 1 for ResNet-110)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: not seeded)")
    p.add_argument("--workers", type=int, default=4, help="data loader workers")
    return p


def learning_rate(args, epoch: int) -> float:
    """lr at 1-based ``epoch``: divided by ``lr_decay`` at each milestone passed."""
    if epoch <= args.warmup:
        return args.lr / 10
    return args.lr / args.lr_decay ** sum(epoch >= m for m in args.milestones)


@torch.no_grad()
def accuracy(resnet, loader, device) -> float:
    resnet.eval()
    correct = total = 0
    for inputs, targets in tqdm(loader, desc="test", leave=False, dynamic_ncols=True):
        preds = resnet.forward_full(inputs.to(device)).argmax(1).cpu()
        correct += (preds == targets).sum().item()
        total += len(targets)
    return correct / total


def main(args: argparse.Namespace) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    if args.epochs < 1 or args.batch_size < 1 or args.workers < 0:
        raise BlockDropError("--epochs and --batch_size must be at least 1, --workers not negative")
    cfg = get_config(args.model)
    device = choose_device(args.device)
    seed_everything(args.seed)
    cv_dir = Path(args.cv_dir) if args.cv_dir else PRETRAINED_DIR / cfg.name
    trainset, testset = get_datasets(cfg, args.data_dir)
    pin = device.type == "cuda"
    trainloader = DataLoader(trainset, batch_size=args.batch_size, shuffle=True,
                             num_workers=args.workers, pin_memory=pin)
    testloader = DataLoader(testset, batch_size=256, shuffle=False, num_workers=args.workers,
                            pin_memory=pin)

    resnet = build_resnet(cfg).to(device)
    optimizer = torch.optim.SGD(resnet.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.wd)
    save_args(args, cv_dir)
    writer = SummaryWriter(str(cv_dir / "log"))
    acc = 0.0
    try:
        for epoch in range(1, args.epochs + 1):
            lr = learning_rate(args, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            resnet.train()
            loss_sum = correct = seen = 0
            for inputs, targets in tqdm(trainloader, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True):
                inputs, targets = inputs.to(device), targets.to(device)
                logits = resnet.forward_full(inputs)
                loss = F.cross_entropy(logits, targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.item() * len(targets)
                correct += (logits.argmax(1) == targets).sum().item()
                seen += len(targets)
            acc = accuracy(resnet, testloader, device)
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
