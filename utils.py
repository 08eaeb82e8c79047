"""Shared helpers: errors and command-line plumbing, checkpoints, FLOP counting, data sets."""

from __future__ import annotations

import argparse
import codecs
import json
import os
import pickle
import random
import re
import sys
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset


# --------------------------------------------------------------------------
# errors and command-line plumbing
# --------------------------------------------------------------------------
class BlockDropError(Exception):
    """An expected failure (bad flag, missing or wrong file): the scripts print
    its message as one line and exit with status 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr and exit status 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def run_cli(main: Callable[[argparse.Namespace], object], parser: argparse.ArgumentParser) -> None:
    """Parse flags, run ``main`` and turn a BlockDropError into one line + exit 2."""
    args = parser.parse_args()
    try:
        main(args)
    except BlockDropError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        sys.exit(130)


def load_script(name: str):
    """Import one of the project's top-level scripts by file (``test.py`` would
    otherwise lose to the standard library's ``test`` package)."""
    import importlib.util

    module_name = f"blockdrop_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, Path(__file__).resolve().parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def run_step(script: str, module, argv: list[str]):
    """Print ``$ python <script> <argv>``, then run that script's ``main`` in this
    process: how the pipeline scripts (demo, sweep) show each step as its command."""
    print(f"\n$ python {script} {' '.join(map(str, argv))}", flush=True)
    return module.main(module.get_args_parser().parse_args(list(map(str, argv))))


def choose_device(name: str | None) -> torch.device:
    """``--device``: default CUDA when present, else CPU."""
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BlockDropError(f"--device {name!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BlockDropError(f"--device {name} asked for CUDA but no CUDA GPU is available; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise BlockDropError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def seed_everything(seed: int | None) -> None:
    if seed is None:
        return
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_args(args: argparse.Namespace, cv_dir: Path) -> None:
    """The run's arguments, one ``name: value`` per line, in ``cv_dir/args.txt``."""
    cv_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(f"{k}: {v}\n" for k, v in sorted(vars(args).items()))
    atomic_write_bytes(cv_dir / "args.txt", text.encode())


# --------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------
CKPT_PATTERN = re.compile(
    r"ckpt_E_(?P<epoch>\d+)_A_(?P<acc>[0-9.]+)_R_(?P<reward>[-+0-9.E]+)"
    r"_S_(?P<blocks>[0-9.]+)_#_(?P<unique>\d+)\.t7$"
)
BASE_PATTERN = re.compile(r"pk_E_(?P<epoch>\d+)_A_(?P<acc>[0-9.]+)\.t7$")


def checkpoint_name(epoch: int, acc: float, reward: float, blocks: float, unique: int) -> str:
    """The authors' name: ``ckpt_E_{epoch}_A_{acc}_R_{reward}_S_{blocks}_#_{unique}.t7``."""
    return f"ckpt_E_{epoch}_A_{acc:.3f}_R_{reward:.2E}_S_{blocks:.2f}_#_{unique}.t7"


def parse_checkpoint_name(name: str | Path) -> dict:
    """Inverse of ``checkpoint_name`` (figures rounded as in the name)."""
    m = CKPT_PATTERN.search(Path(name).name)
    if not m:
        raise ValueError(f"{name} is not named like a BlockDrop checkpoint")
    return {"epoch": int(m["epoch"]), "acc": float(m["acc"]), "reward": float(m["reward"]),
            "blocks": float(m["blocks"]), "unique": int(m["unique"])}


def base_checkpoint_name(epoch: int, acc: float) -> str:
    return f"pk_E_{epoch}_A_{acc:.3f}.t7"


def parse_base_checkpoint_name(name: str | Path) -> dict:
    m = BASE_PATTERN.search(Path(name).name)
    if not m:
        raise ValueError(f"{name} is not named like a pretrained base")
    return {"epoch": int(m["epoch"]), "acc": float(m["acc"])}


def _write_atomically(path: Path, write: Callable[[str], None]) -> Path:
    """``write`` a temporary file beside ``path``, then ``os.replace`` it into place:
    a killed job never leaves a half-written file under the real name. The file
    gets the permissions an ordinary ``open`` would give it (mkstemp's are 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    return _write_atomically(path, lambda tmp: Path(tmp).write_bytes(data))


def save_checkpoint(obj: dict, path: Path) -> Path:
    """``torch.save``, atomically (see ``_write_atomically``)."""
    return _write_atomically(path, lambda tmp: torch.save(obj, tmp))


def converted_path(path: Path) -> Path:
    """Where ``convert_base.py`` writes the plain state dict of a pickled base."""
    return Path(path).with_name(Path(path).name + ".weights.t7")


def load_state_file(path: Path) -> object:
    """``torch.load`` with ``weights_only=True`` onto the CPU (files saved on a
    GPU and files in the legacy non-zip format both load). Any failure to read
    is one BlockDropError naming the file."""
    path = Path(path)
    if not path.exists():
        raise BlockDropError(f"{path}: no such file")
    if not path.is_file():
        raise BlockDropError(f"{path}: not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "Weights only load failed" in first:
            raise BlockDropError(
                f"{path}: holds pickled Python objects (for example a whole nn.Module), which a safe load "
                f"refuses because unpickling them can run code; if you trust this file, convert it once with "
                f"'python convert_base.py {path}' (it writes {converted_path(path).name}, a plain state dict, "
                "beside it) and use that"
            ) from None
        raise BlockDropError(f"{path}: not a PyTorch checkpoint ({first})") from None
    except Exception as exc:  # truncated zip, random bytes, empty file, ...
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BlockDropError(f"{path}: not a readable PyTorch checkpoint (truncated or another format: {detail})") from None


_LAYER_KEY = re.compile(r"^layer(\d+)\.(\d+)\.(.*)$")


def to_flat_keys(state: dict) -> dict:
    """Standard-layout ResNet keys -> flat keys (SPEC section 6):
    ``module.`` prefixes dropped, ``layer{L}.{i}.X -> blocks.{L-1}.{i}.X`` and
    ``layer{L}.{i}.downsample.{j}.X -> ds.{L-1}.{j}.X``; flat keys pass through."""
    out = {}
    for key, value in state.items():
        while key.startswith("module."):
            key = key[len("module."):]
        m = _LAYER_KEY.match(key)
        if m:
            stage, index, rest = int(m[1]) - 1, m[2], m[3]
            if rest.startswith("downsample."):
                key = f"ds.{stage}.{rest[len('downsample.'):]}"
            else:
                key = f"blocks.{stage}.{index}.{rest}"
        out[key] = value
    return out


def _unwrap_state(obj: object, path: Path, keys: Iterable[str]) -> dict:
    if isinstance(obj, dict):
        for k in keys:
            if k in obj and isinstance(obj[k], dict):
                return obj[k]
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise BlockDropError(f"{path}: holds no state dict (looked for {', '.join(keys)} or plain tensors)")


def load_weights(model: nn.Module, state: dict, path: Path, what: str) -> None:
    """Load ``state`` into ``model`` strictly, forgiving only what old files lack
    (BN ``num_batches_tracked``, before PyTorch 0.4.1) or carry in excess
    (``features.fc.*`` of old agents). A mismatch is one line naming the file."""
    state = {k: v for k, v in state.items() if not k.startswith("features.fc.")}
    while state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    own = model.state_dict()
    for key, value in own.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value.clone()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s) such as {missing[0]!r}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) such as {unexpected[0]!r}")
        raise BlockDropError(f"{path}: the {what} does not fit: {'; '.join(parts)}")
    for key, value in own.items():
        if not isinstance(state[key], torch.Tensor):
            raise BlockDropError(f"{path}: the {what} entry {key!r} is not a tensor")
        if state[key].shape != value.shape:
            raise BlockDropError(
                f"{path}: the {what} does not fit: {key} has shape {list(state[key].shape)} "
                f"in the file but {list(value.shape)} here"
            )
    model.load_state_dict(state, strict=True)


def load_base(resnet: nn.Module, path: Path, model_name: str) -> dict:
    """A pretrained base ResNet in the standard layout (``state_dict`` wrapper,
    a plain state dict or torchvision's ResNet keys, ``module.`` prefixes)."""
    obj = load_state_file(path)
    state = to_flat_keys(_unwrap_state(obj, path, ("state_dict", "model", "resnet", "net")))
    load_weights(resnet, state, path, f"{model_name} base ResNet")
    return obj if isinstance(obj, dict) else {}


def load_blockdrop_checkpoint(path: Path, model_name: str, agent: nn.Module,
                              resnet: nn.Module | None = None) -> dict:
    """A BlockDrop checkpoint: the agent under ``agent`` (or the legacy ``net``),
    and the ResNet under ``resnet`` when finetuned. Returns the file's dict and
    sets ``has_resnet`` in it."""
    obj = load_state_file(path)
    if not isinstance(obj, dict):
        raise BlockDropError(f"{path}: not a BlockDrop checkpoint (expected a dict with an 'agent' entry)")
    agent_state = obj.get("agent", obj.get("net"))
    if not isinstance(agent_state, dict):
        raise BlockDropError(f"{path}: holds no 'agent' (or legacy 'net') entry; not a BlockDrop checkpoint")
    num_blocks = getattr(agent, "num_blocks", None)
    logit = agent_state.get("logit.weight", agent_state.get("module.logit.weight"))
    if isinstance(logit, torch.Tensor) and num_blocks is not None and logit.shape[0] != num_blocks:
        raise BlockDropError(
            f"{path}: its agent decides {logit.shape[0]} blocks but {model_name} has {num_blocks}; "
            "pass the --model it was trained for"
        )
    load_weights(agent, agent_state, path, f"{model_name} agent")
    has_resnet = isinstance(obj.get("resnet"), dict)
    if has_resnet and resnet is not None:
        load_weights(resnet, to_flat_keys(obj["resnet"]), path, f"{model_name} ResNet")
    return {**obj, "has_resnet": has_resnet}


# --------------------------------------------------------------------------
# FLOP counting (SPEC section 7): hooks on the modules that run, no patching
# --------------------------------------------------------------------------
def layer_flops(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    """FLOPs of one call, per image: conv 2*Cin*Cout*kh*kw*Hout*Wout/groups,
    linear 2*in*out; everything else 0."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        per_out = 2 * (module.in_channels // module.groups) * kh * kw
        return per_out * output[0].numel()
    if isinstance(module, nn.Linear):
        return 2 * module.in_features * module.out_features * (output[0].numel() // module.out_features)
    return 0


class FlopCounter:
    """Context manager: counts the FLOPs per image of every Conv2d and Linear
    under ``roots`` that runs while it is active, by forward hooks.
    ``total`` is the sum; ``by_name`` maps each module's qualified name (with
    the root's prefix) to its FLOPs. Inputs must be one image per call."""

    def __init__(self, **roots: nn.Module):
        self.roots = roots
        self.total = 0
        self.by_name: dict[str, int] = {}
        self._handles = []

    def __enter__(self) -> FlopCounter:
        for prefix, root in self.roots.items():
            for name, module in root.named_modules():
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    full = f"{prefix}.{name}" if prefix else name
                    self._handles.append(module.register_forward_hook(self._hook(full)))
        return self

    def _hook(self, name: str):
        def hook(module, inputs, output):
            flops = layer_flops(module, inputs, output)
            self.total += flops
            self.by_name[name] = self.by_name.get(name, 0) + flops
        return hook

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


_BLOCK_NAME = re.compile(r"^blocks\.(\d+)\.(\d+)\.")


@torch.no_grad()
def resnet_flop_table(resnet: nn.Module, input_size: int) -> tuple[int, list[int]]:
    """(always-paid FLOPs, FLOPs of each block t) of one image, measured by
    running the full network once under a FlopCounter. The always-paid part is
    the stem, the head and the conv shortcuts (which run even when their block
    is dropped). A policy u costs ``base + sum_t u_t * block[t]``."""
    was_training = resnet.training
    resnet.eval()
    device = next(resnet.parameters()).device
    with FlopCounter(**{"": resnet}) as counter:
        resnet.forward_full(torch.zeros(1, 3, input_size, input_size, device=device))
    resnet.train(was_training)
    index = {(s, i): t for t, (s, i) in enumerate(resnet.block_index)}
    blocks = [0] * len(index)
    base = 0
    for name, flops in counter.by_name.items():
        m = _BLOCK_NAME.match(name)
        if m:
            blocks[index[(int(m[1]), int(m[2]))]] += flops
        else:
            base += flops
    return base, blocks


@torch.no_grad()
def agent_flops(agent: nn.Module, input_size: int) -> int:
    """FLOPs of one pass of the policy network on one image (logit and vnet included)."""
    was_training = agent.training
    agent.eval()
    device = next(agent.parameters()).device
    with FlopCounter(**{"": agent}) as counter:
        agent(torch.zeros(1, 3, input_size, input_size, device=device))
    agent.train(was_training)
    return counter.total


# --------------------------------------------------------------------------
# data (SPEC section 8)
# --------------------------------------------------------------------------
CIFAR_SOURCES = {
    # dataset: (folder, archive URL, train files, test files, label key)
    "C10": ("cifar-10-batches-py", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
    "C100": ("cifar-100-python", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
             ["train"], ["test"], "fine_labels"),
}
NO_DOWNLOAD_ENV = "BLOCKDROP_NO_DOWNLOAD"  # set to 1 to never try the network


def downloads_allowed() -> bool:
    return os.environ.get(NO_DOWNLOAD_ENV, "") not in ("1", "true", "yes")


class ArrayDataset(Dataset):
    """Images as a uint8 N x H x W x 3 array with integer labels; ``transform``
    takes a float 3 x H x W tensor in [0, 1]."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform=None):
        if images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(labels):
            raise BlockDropError(f"images must be N x H x W x 3 with one label each, got {images.shape}")
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx: int):
        image = self.images[idx].permute(2, 0, 1).float().div_(255)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[idx]


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles what a CIFAR python batch holds (dicts, lists, strings and numpy
    arrays) and refuses every other global, so a data file cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],
        ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how protocol-2 pickles of Python 3 store bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"holds {module}.{name}, which a data file has no reason to hold")


def read_cifar_batches(folder: Path, files: list[str], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Read CIFAR python-layout batches (pickled dicts of ``data`` N x 3072 and
    labels) as they are, without checksums."""
    images, labels = [], []
    for name in files:
        path = folder / name
        try:
            with open(path, "rb") as fh:
                entry = _ArraysOnlyUnpickler(fh, encoding="latin1").load()
            data = entry.get("data", entry.get(b"data"))
            target = entry.get(label_key, entry.get(label_key.encode()))
            data = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        except Exception as exc:
            raise BlockDropError(f"{path}: not a CIFAR python batch ({type(exc).__name__}: {exc})") from None
        if target is None or len(target) != len(data):
            raise BlockDropError(f"{path}: not a CIFAR python batch (no {label_key!r} of {len(data)} labels)")
        images.append(data)
        labels.append(np.asarray(target, dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def write_cifar10_layout(data_dir: Path, train: tuple[np.ndarray, np.ndarray],
                         test: tuple[np.ndarray, np.ndarray]) -> Path:
    """Write N x 32 x 32 x 3 uint8 images with labels 0..9 as CIFAR-10's python
    batches (``data_batch_1..5``, ``test_batch``) in ``data_dir/cifar-10-batches-py``,
    so data of one's own runs through the CIFAR path as it is."""
    folder_name, _, train_files, test_files, label_key = CIFAR_SOURCES["C10"]
    folder = Path(data_dir) / folder_name
    parts = list(zip(train_files, np.array_split(np.arange(len(train[1])), len(train_files)), strict=True))
    parts.append((test_files[0], np.arange(len(test[1]))))
    for name, idx in parts:
        images, labels = (train if name in train_files else test)
        if images.shape[1:] != (32, 32, 3) or images.dtype != np.uint8:
            raise BlockDropError(f"CIFAR-10 images are N x 32 x 32 x 3 uint8, got {images.shape} {images.dtype}")
        rows = images[idx].transpose(0, 3, 1, 2).reshape(len(idx), 3072)  # R plane, G plane, B plane
        entry = {"batch_label": name, "data": np.ascontiguousarray(rows),
                 label_key: [int(v) for v in labels[idx]], "filenames": [f"{name}_{i}.png" for i in idx]}
        atomic_write_bytes(folder / name, pickle.dumps(entry, protocol=2))
    return folder


def digits_as_cifar10(data_dir: str | Path = "data/") -> Path:
    """The digits (``digits_arrays``: 1,437 train, 360 test) written in CIFAR-10's
    python layout under ``data_dir``: real images for trying the CIFAR scripts
    (``--model R32_C10 --data_dir <data_dir>``) where CIFAR cannot be fetched."""
    folder = write_cifar10_layout(Path(data_dir), *digits_arrays())
    print(f"wrote the digits as CIFAR-10 python batches in {folder}")
    return folder


def download_cifar(dataset: str, data_dir: Path, url: str | None = None) -> None:
    """Fetch and unpack the official archive into ``data_dir``."""
    folder, default_url, *_ = CIFAR_SOURCES[dataset]
    url = url or default_url
    data_dir.mkdir(parents=True, exist_ok=True)
    archive = data_dir / Path(url).name
    part = archive.with_name(archive.name + ".part")
    print(f"downloading {url} to {data_dir}", file=sys.stderr)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as fh:
            while chunk := response.read(1 << 20):
                fh.write(chunk)
        os.replace(part, archive)
        with tarfile.open(archive) as tar:
            tar.extractall(data_dir, filter="data")
    finally:
        part.unlink(missing_ok=True)


def cifar_arrays(dataset: str, data_dir: Path, url: str | None = None):
    folder, _, train_files, test_files, label_key = CIFAR_SOURCES[dataset]
    root = Path(data_dir) / folder
    wanted = train_files + test_files
    if not all((root / f).is_file() for f in wanted):
        reason = f"set {NO_DOWNLOAD_ENV}"
        if downloads_allowed():
            try:
                download_cifar(dataset, Path(data_dir), url)
                reason = ""
            except Exception as exc:
                reason = f"download failed: {exc}"
        if not all((root / f).is_file() for f in wanted):
            raise BlockDropError(
                f"{dataset} data not found: put {', '.join(wanted)} (the python version of the "
                f"data set) in {root}/ ({reason})"
            )
    return (read_cifar_batches(root, train_files, label_key),
            read_cifar_batches(root, test_files, label_key))


def _cifar_transforms(normalize):
    from torchvision import transforms as T

    tail = [T.Normalize(*normalize)] if normalize else []
    train = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), *tail])
    test = T.Compose(tail) if tail else None
    return train, test


def cifar_datasets(cfg, data_dir: Path, url: str | None = None):
    (xtr, ytr), (xte, yte) = cifar_arrays(cfg.dataset, data_dir, url)
    train_tf, test_tf = _cifar_transforms(cfg.normalize)
    return ArrayDataset(xtr, ytr, train_tf), ArrayDataset(xte, yte, test_tf)


def imagenet_datasets(cfg, data_dir: Path, url: str | None = None):
    from torchvision import datasets as D
    from torchvision import transforms as T

    norm = T.Normalize(*cfg.normalize)
    train_tf = T.Compose([T.Resize(256), T.RandomCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    test_tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), norm])
    out = []
    for split, tf in (("train", train_tf), ("val", test_tf)):
        folder = Path(data_dir) / split
        if not folder.is_dir():
            raise BlockDropError(
                f"ImageNet {split} images not found: put one folder per class in {folder}/ "
                "(the standard ImageFolder layout)"
            )
        try:
            out.append(D.ImageFolder(str(folder), transform=tf))
        except (FileNotFoundError, RuntimeError) as exc:
            raise BlockDropError(f"{folder}: {exc}") from None
    return tuple(out)


DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def digits_arrays() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The UCI handwritten digits that scikit-learn ships (1,797 images, 8x8,
    values 0..16, 10 classes), upsampled bilinearly to 32x32, repeated to three
    channels, as uint8; a fixed stratified split: 1,437 train, 360 test."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise BlockDropError("the digits data set needs scikit-learn: pip install scikit-learn") from None
    import torch.nn.functional as F

    digits = load_digits()
    small = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    large = F.interpolate(small, size=32, mode="bilinear", align_corners=False).clamp_(0, 1)
    images = (large * 255).round().to(torch.uint8).repeat(1, 3, 1, 1).permute(0, 2, 3, 1).numpy()
    labels = digits.target.astype(np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=DIGITS_TEST_FRACTION, stratify=labels,
        random_state=DIGITS_SPLIT_SEED)
    return (images[idx_train], labels[idx_train]), (images[idx_test], labels[idx_test])


def digits_datasets(cfg, data_dir: Path | None = None):
    """Offline, from scikit-learn's package (``data_dir`` is not used). The
    train transform is CIFAR's random crop without the flip: a mirrored digit
    is not the same digit."""
    from torchvision import transforms as T

    (xtr, ytr), (xte, yte) = digits_arrays()
    train_tf = T.RandomCrop(32, padding=4)
    return ArrayDataset(xtr, ytr, train_tf), ArrayDataset(xte, yte, None)


DATASETS: dict[str, Callable] = {
    "C10": cifar_datasets,
    "C100": cifar_datasets,
    "ImgNet": imagenet_datasets,
    "Digits": digits_datasets,
}


def get_datasets(cfg, data_dir: str | Path):
    """(train set, test set) of a configuration, with SPEC's transforms."""
    return DATASETS[cfg.dataset](cfg, Path(data_dir))


def write_json(path: Path, obj: dict) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2) + "\n").encode())


PRETRAINED_DIR = Path("cv/pretrained")


def find_default_base(cfg) -> Path | None:
    """The configuration's default base (SPEC section 1), its plain state dict
    written by ``convert_base.py`` when there is one, or, when that file is
    absent, the newest ``pk_E_<epoch>_A_<acc>.t7`` that ``pretrain.py`` wrote
    in the same folder."""
    path = PRETRAINED_DIR / cfg.pretrained
    if converted_path(path).is_file():  # the default file was a pickle, converted by convert_base.py
        return converted_path(path)
    if path.is_file():
        return path
    candidates = []
    if path.parent.is_dir():
        for f in path.parent.glob("pk_E_*_A_*.t7"):
            try:
                fig = parse_base_checkpoint_name(f)
            except ValueError:
                continue
            candidates.append((fig["epoch"], fig["acc"], f))
    return max(candidates)[2] if candidates else None


def load_default_or_given_base(resnet: nn.Module, cfg, base: str | None) -> Path:
    """Load ``--base`` or, without it, the configuration's default base under
    ``cv/pretrained/``; a missing default says where it is expected."""
    path = Path(base) if base else find_default_base(cfg)
    if path is None:
        raise BlockDropError(
            f"no pretrained base ResNet for {cfg.name} at {PRETRAINED_DIR / cfg.pretrained}: put it there, "
            f"pass --base PATH, or train one with: python pretrain.py --model {cfg.name}"
        )
    load_base(resnet, path, cfg.name)
    return path


def to_standard_keys(state: dict) -> dict:
    """Flat keys -> the standard ResNet layout (inverse of ``to_flat_keys``)."""
    out = {}
    for key, value in state.items():
        m = re.match(r"^blocks\.(\d+)\.(\d+)\.(.*)$", key)
        d = re.match(r"^ds\.(\d+)\.(.*)$", key)
        if m:
            key = f"layer{int(m[1]) + 1}.{m[2]}.{m[3]}"
        elif d:
            key = f"layer{int(d[1]) + 1}.0.downsample.{d[2]}"
        out[key] = value
    return out
