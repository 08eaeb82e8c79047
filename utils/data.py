"""Data sets (SPEC section 8): CIFAR-10/100 in the python layout, ImageNet image
folders, the UCI handwritten digits that scikit-learn ships, and Fashion-MNIST
(found and read by ``utils.fashion``); with the transforms the base networks
were trained with."""

from __future__ import annotations

import codecs
import os
import pickle
import sys
import tarfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset
from torchvision import datasets as tv_datasets
from torchvision import transforms as T

from .errors import BlockDropError
from .fashion import fashion_arrays
from .files import NO_DOWNLOAD_ENV, atomic_write_bytes, downloads_allowed

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


CIFAR_CLASSES = {"C10": 10, "C100": 100}


class ArrayDataset(Dataset):
    """Images as a uint8 N x H x W x 3 array with integer labels; ``transform``
    takes a float 3 x H x W tensor in [0, 1]."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform=None):
        if images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(labels):
            raise BlockDropError(f"images must be N x H x W x 3 with one label each, got {images.shape}")
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.transform = transform

    @classmethod
    def of(cls, dataset: ArrayDataset, keep: np.ndarray) -> ArrayDataset:
        """The images ``keep`` of ``dataset``, with its transform."""
        return cls(dataset.images.numpy()[keep], dataset.labels.numpy()[keep], dataset.transform)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx: int):
        image = self.images[idx].permute(2, 0, 1).float().div_(255)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[idx]


class WithIndex(Dataset):
    """Items of ``dataset`` with their index: (image, target, index)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int):
        image, target = self.dataset[idx]
        return image, target, idx


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles what a CIFAR python batch holds (dicts, lists, strings and numpy
    arrays) and refuses every other global, so a data file cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],
        ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how protocol-2 pickles of Python 3 store bytes
        ("__builtin__", "bytes"): bytes,  # ... and empty bytes (an empty array's data)
        ("builtins", "bytes"): bytes,
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"holds {module}.{name}, which a data file has no reason to hold")


def read_cifar_batches(folder: Path, files: list[str], label_key: str,
                       num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read CIFAR python-layout batches (pickled dicts of ``data`` N x 3072 and
    labels) as they are, without checksums; labels outside 0..num_classes-1
    are refused, naming the file."""
    images, labels = [], []
    for name in files:
        path = folder / name
        try:
            with open(path, "rb") as fh:
                entry = _ArraysOnlyUnpickler(fh, encoding="latin1").load()
            data = entry.get("data", entry.get(b"data"))
            target = entry.get(label_key, entry.get(label_key.encode()))
            data = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        except (OSError, EOFError, pickle.UnpicklingError, AttributeError, KeyError, TypeError, ValueError) as exc:
            raise BlockDropError(f"{path}: not a CIFAR python batch ({type(exc).__name__}: {exc})") from exc
        if target is None or len(target) != len(data):
            raise BlockDropError(f"{path}: not a CIFAR python batch (no {label_key!r} of {len(data)} labels)")
        images.append(data)
        labels.append(class_indices(path, target, num_classes))
    return np.concatenate(images), np.concatenate(labels)


def class_indices(path: Path, target, num_classes: int | None) -> np.ndarray:
    """A batch's labels as int64 class indices, or one BlockDropError naming the
    file and the first label that is not a whole number from 0 to ``num_classes - 1``."""
    values = np.asarray(target)
    if values.ndim != 1:
        raise BlockDropError(f"{path}: not a CIFAR python batch (its labels are not one list of numbers)")
    high = num_classes if num_classes else 2**63
    if values.dtype.kind in "iu":  # the common case, checked at once
        bad = values[(values < 0) | (values >= high)]
        first = bad[0].item() if len(bad) else None
    else:  # floats, numbers too large for int64, strings: one at a time
        given = target.tolist() if isinstance(target, np.ndarray) else list(target)
        first = next((v for v in given if not _class_index(v, high)), None)
    if first is not None:
        raise BlockDropError(f"{path}: label {first!r} is not a class of this data set: labels are whole numbers "
                             f"from 0 to {high - 1}")
    return values.astype(np.int64)


def _class_index(value, high: int) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return float(value).is_integer() and 0 <= value < high


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
    archive = data_dir / Path(url).name
    part = archive.with_name(archive.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response:  # nothing is said or made before it answers
            print(f"downloading {url} to {data_dir}", file=sys.stderr)
            data_dir.mkdir(parents=True, exist_ok=True)
            with open(part, "wb") as fh:
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
            except (OSError, tarfile.TarError) as exc:  # no network, a broken archive
                reason = f"download failed: {exc}"
        if not all((root / f).is_file() for f in wanted):
            raise BlockDropError(
                f"{dataset} data not found: put {', '.join(wanted)} (the python version of the "
                f"data set) in {root}/ ({reason})"
            )
    classes = CIFAR_CLASSES[dataset]
    train = read_cifar_batches(root, train_files, label_key, classes)
    if len(train[1]) == 0:
        raise BlockDropError(f"{root}: the training batches ({', '.join(train_files)}) hold no images: the data set "
                             "is empty")
    test = read_cifar_batches(root, test_files, label_key, classes)
    if len(test[1]) == 0:
        raise BlockDropError(f"{root}: the test batches ({', '.join(test_files)}) hold no images: there is nothing "
                             "to evaluate on")
    return train, test


def _cifar_transforms(normalize):
    tail = [T.Normalize(*normalize)] if normalize else []
    train = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), *tail])
    test = T.Compose(tail) if tail else None
    return train, test


def _cifar_style_datasets(arrays, normalize):
    """(train set, test set) of 32x32 arrays with CIFAR's crop and flip."""
    (xtr, ytr), (xte, yte) = arrays
    train_tf, test_tf = _cifar_transforms(normalize)
    return ArrayDataset(xtr, ytr, train_tf), ArrayDataset(xte, yte, test_tf)


def cifar_datasets(config, data_dir: Path, url: str | None = None):
    return _cifar_style_datasets(cifar_arrays(config.dataset, data_dir, url), config.normalize)


def fashion_datasets(config, data_dir: Path):
    """Fashion-MNIST padded to 32x32 and in three channels (``utils.fashion``),
    with CIFAR's crop and flip (a mirrored garment is the same garment) and
    normalised with the data set's own mean and std."""
    return _cifar_style_datasets(fashion_arrays(data_dir), config.normalize)


def imagenet_datasets(config, data_dir: Path, url: str | None = None):
    norm = T.Normalize(*config.normalize)
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
            out.append(tv_datasets.ImageFolder(str(folder), transform=tf))
        except (FileNotFoundError, RuntimeError) as exc:
            raise BlockDropError(f"{folder}: {exc}") from exc
    return tuple(out)


DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def digits_arrays() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The UCI handwritten digits that scikit-learn ships (1,797 images, 8x8,
    values 0..16, 10 classes), upsampled bilinearly to 32x32, repeated to three
    channels, as uint8; a fixed stratified split: 1,437 train, 360 test."""
    try:  # imported here: scikit-learn is slow to import and only the digits need it
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise BlockDropError("the digits data set needs scikit-learn: pip install scikit-learn") from exc

    digits = load_digits()
    small = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    large = F.interpolate(small, size=32, mode="bilinear", align_corners=False).clamp_(0, 1)
    images = (large * 255).round().to(torch.uint8).repeat(1, 3, 1, 1).permute(0, 2, 3, 1).numpy()
    labels = digits.target.astype(np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=DIGITS_TEST_FRACTION, stratify=labels,
        random_state=DIGITS_SPLIT_SEED)
    return (images[idx_train], labels[idx_train]), (images[idx_test], labels[idx_test])


def digits_datasets(config, data_dir: Path | None = None):
    """Offline, from scikit-learn's package (``data_dir`` is not used). The
    train transform is CIFAR's random crop without the flip: a mirrored digit
    is not the same digit."""
    (xtr, ytr), (xte, yte) = digits_arrays()
    train_tf = T.RandomCrop(32, padding=4)
    return ArrayDataset(xtr, ytr, train_tf), ArrayDataset(xte, yte, None)


DATASETS: dict[str, Callable] = {
    "C10": cifar_datasets,
    "C100": cifar_datasets,
    "ImgNet": imagenet_datasets,
    "Digits": digits_datasets,
    "Fashion": fashion_datasets,
}


def get_datasets(config, data_dir: str | Path, train_subset: int | None = None):
    """(train set, test set) of a configuration, with SPEC's transforms;
    ``train_subset``: that many training images, balanced over the classes
    (``balanced_subset``), the test set whole."""
    trainset, testset = DATASETS[config.dataset](config, Path(data_dir))
    if train_subset is not None:
        keep = balanced_subset(dataset_labels(trainset), train_subset, config.num_classes)
        trainset = ArrayDataset.of(trainset, keep) if isinstance(trainset, ArrayDataset) else Subset(trainset, keep)
    return trainset, testset


SUBSET_SEED = 0  # the subset does not change with --seed: the base, the curriculum and finetuning see one set


def balanced_subset(labels: np.ndarray, size: int, num_classes: int) -> np.ndarray:
    """Indices (sorted) of ``size`` images, ``size // num_classes`` of each class
    (the first classes one more, for the remainder), drawn by a fixed seed."""
    counts = np.bincount(labels, minlength=num_classes)
    share = np.full(num_classes, size // num_classes)
    share[: size % num_classes] += 1
    if size > len(labels):
        raise BlockDropError(f"--train_subset {size}: the training set has only {len(labels)} images; ask for at "
                             "most that many")
    short = np.flatnonzero(share > counts)
    if len(short):
        c = int(short[0])
        raise BlockDropError(f"--train_subset {size}: class {c} has {counts[c]} training images, fewer than its "
                             f"share of {share[c]}; ask for at most {num_classes * int(counts.min())} images")
    rng = np.random.default_rng(SUBSET_SEED)
    picked = [rng.permutation(np.flatnonzero(labels == c))[: share[c]] for c in range(num_classes)]
    return np.sort(np.concatenate(picked))


def dataset_labels(dataset) -> np.ndarray:
    """The labels of an ArrayDataset or an image folder, without reading the images."""
    labels = dataset.labels if isinstance(dataset, ArrayDataset) else dataset.targets
    return np.asarray(labels, dtype=np.int64)
