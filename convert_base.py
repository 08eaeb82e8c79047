"""Convert a pickled base ResNet that you trust into a plain state dict, once.

    python convert_base.py cv/pretrained/R101_ImgNet/ImageNet_R101_224_76.464

The original loader accepted a whole pickled ``nn.Module`` as a base, and the
released ImageNet ResNet-101 may be one. This project reads every file with
``torch.load(..., weights_only=True)``, which refuses such a file because
unpickling it can run any code it holds. This command is the one place where a
pickle is unpickled in full: run it only on a file you trust. It writes
``<file>.weights.t7`` beside the file (``{"state_dict": ...}``, tensors only),
which then loads safely; for a configuration's default base it is found in
place of the original file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn as nn

from utils.cli import ArgumentParser, run_cli
from utils.errors import BlockDropError
from utils.files import converted_path, load_state_file, save_checkpoint


def get_args_parser() -> ArgumentParser:
    p = ArgumentParser(prog="convert_base.py",
                       description="convert a trusted pickled base ResNet into a plain state dict")
    p.add_argument("path", help="the pickled file (a whole nn.Module, or a dict holding one)")
    p.add_argument("--out", default=None, help="where to write the state dict (default: <path>.weights.t7)")
    return p


def unpickle_trusted(path: Path) -> object:
    """``torch.load`` with ``weights_only=False``: runs whatever the file holds."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except UnicodeDecodeError:  # pickled by Python 2
        return torch.load(path, map_location="cpu", weights_only=False, encoding="latin1")


def state_dict_of(obj: object, path: Path) -> dict:
    """The tensors of a module, of a dict's ``state_dict`` entry, or of a plain state dict."""
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {str(k): v.detach().cpu().clone() for k, v in obj.items()}
    raise BlockDropError(f"{path}: holds neither an nn.Module nor a state dict ({type(obj).__name__})")


def main(args: argparse.Namespace) -> Path:
    path = Path(args.path)
    out = Path(args.out) if args.out else converted_path(path)
    if not path.is_file():
        raise BlockDropError(f"{path}: no such file")
    if out.exists():
        raise BlockDropError(f"{out} exists already; remove it or pass --out elsewhere")
    try:
        obj = unpickle_trusted(path)
    except Exception as exc:
        raise BlockDropError(f"{path}: could not be unpickled ({type(exc).__name__}: {exc})") from exc
    state = state_dict_of(obj, path)
    save_checkpoint({"state_dict": state}, out)
    load_state_file(out)  # what the scripts will do with it: a safe load
    print(f"wrote {out}: {len(state)} tensors as a plain state dict, which loads with weights_only=True")
    return out


if __name__ == "__main__":
    run_cli(main, get_args_parser())
