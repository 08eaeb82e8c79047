"""Fashion-MNIST (Zalando: 60,000 training and 10,000 test images, 28x28 grayscale,
10 classes): where its four IDX files are found, and the images as the CIFAR
ResNets take them.

The files are looked for, in this order:

1. ``<data_dir>/FashionMNIST/raw/``, torchvision's layout (each file gzip'd or
   unpacked: torchvision's download leaves both);
2. ``/usr/share/datasets/fashion-mnist/``, where Debian's package
   ``dataset-fashion-mnist`` puts the four ``.gz`` files; read in place (the
   package's folder is never written to);
3. a download into ``<data_dir>/FashionMNIST/raw/`` by torchvision, unless
   downloads are switched off (``BLOCKDROP_NO_DOWNLOAD``).

torchvision reads the IDX files (``torchvision.datasets.mnist``); a gzip'd file
is unpacked into a temporary folder for it first.

The 28x28 images are padded with two black pixels a side to 32x32 and the gray
value is repeated to three channels, so a ``R<depth>_Fashion`` network is the
CIFAR ResNet of SPEC section 2 as it is: the same stem (3 -> 16), the same
state-dict keys and shapes, the same CIFAR policy network and the same FLOP
table. A one-channel stem would save 2/3 of the stem's 884,736 FLOPs per image,
0.4% of a ResNet-8, at the cost of a second layout of every key-, FLOP- and
policy-network path.

The configurations normalise with the data set's own mean and std, those of the
60,000 training images' pixels (28x28, values / 255): 0.28604 and 0.35302
(``models``' ``_FASHION_NORM``).
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import datasets as tv_datasets
from torchvision.datasets.mnist import read_image_file, read_label_file

from .errors import BlockDropError
from .files import NO_DOWNLOAD_ENV, downloads_allowed

FASHION_FOLDER = "FashionMNIST"  # torchvision's: <data_dir>/FashionMNIST/raw/
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's package dataset-fashion-mnist
FASHION_SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                  "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FASHION_CLASSES = 10
FASHION_SIZE = 28

HOW_TO_GET = (f"Debian's package dataset-fashion-mnist (installed, it is read in {DEBIAN_FASHION_DIR}/), "
              f"`make fashion-data` (no root needed) or a download (with the network and {NO_DOWNLOAD_ENV} unset)")


def raw_folder(data_dir: str | Path) -> Path:
    return Path(data_dir) / FASHION_FOLDER / "raw"


def fashion_files(folder: Path) -> dict[str, Path] | None:
    """The four files in ``folder`` by their unpacked name, each the unpacked
    file where there is one, else the ``.gz``; None when one is missing."""
    found = {}
    for name in (name for pair in FASHION_SPLITS.values() for name in pair):
        candidates = [folder / name, folder / f"{name}.gz"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            return None
        found[name] = path
    return found


def download_fashion(data_dir: Path) -> None:
    """torchvision's download of the four files into ``<data_dir>/FashionMNIST/raw/``."""
    tv_datasets.FashionMNIST(str(data_dir), train=True, download=True)


def locate_fashion(data_dir: str | Path) -> dict[str, Path]:
    """The four files: from ``data_dir``, else the Debian package's folder,
    else downloaded into ``data_dir`` when downloads are allowed."""
    files = fashion_files(raw_folder(data_dir)) or fashion_files(DEBIAN_FASHION_DIR)
    if files:
        return files
    reason = f"{NO_DOWNLOAD_ENV} is set"
    if downloads_allowed():
        try:
            download_fashion(Path(data_dir))
            reason = "the download gave no files"
        except (RuntimeError, OSError) as exc:  # no network, a checksum that does not match
            reason = "download failed: " + " ".join(str(exc).split())
        files = fashion_files(raw_folder(data_dir))
    if not files:
        names = ", ".join(f"{name}.gz" for pair in FASHION_SPLITS.values() for name in pair)
        raise BlockDropError(f"Fashion-MNIST data not found ({reason}): put {names} in {raw_folder(data_dir)}/; "
                             f"they come from {HOW_TO_GET}")
    return files


def read_idx(path: Path, reader) -> torch.Tensor:
    """One IDX file read by torchvision's ``reader``; a ``.gz`` is unpacked into
    a temporary folder first. A file that is not one, or is cut short, is a
    BlockDropError naming it."""
    try:
        if path.suffix != ".gz":
            return reader(str(path))
        with tempfile.TemporaryDirectory(prefix="blockdrop-idx-") as tmp:
            plain = Path(tmp) / path.stem
            with gzip.open(path, "rb") as src, open(plain, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            return reader(str(plain))
    except (OSError, EOFError, zlib.error, AssertionError, KeyError, ValueError, RuntimeError, TypeError) as exc:
        detail = " ".join(str(exc).split()) or ("not an IDX header" if isinstance(exc, AssertionError) else "")
        raise BlockDropError(f"{path}: not a readable IDX file, or a truncated one ({type(exc).__name__}: "
                             f"{detail[:200]}); get the files again, from {HOW_TO_GET}") from exc


def read_split(files: dict[str, Path], split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N x 28 x 28 uint8 images, N labels in 0..9) of one split, checked."""
    image_name, label_name = FASHION_SPLITS[split]
    images = read_idx(files[image_name], read_image_file)
    labels = read_idx(files[label_name], read_label_file)
    if tuple(images.shape[1:]) != (FASHION_SIZE, FASHION_SIZE):
        raise BlockDropError(f"{files[image_name]}: images of {tuple(images.shape[1:])} pixels; Fashion-MNIST's "
                             f"are {FASHION_SIZE}x{FASHION_SIZE}")
    if len(images) != len(labels) or not len(labels):
        raise BlockDropError(f"{files[image_name]} holds {len(images)} images and {files[label_name]} "
                             f"{len(labels)} labels: they must be as many, and more than none")
    bad = labels[(labels < 0) | (labels >= FASHION_CLASSES)]
    if len(bad):
        raise BlockDropError(f"{files[label_name]}: label {int(bad[0])} is outside the {FASHION_CLASSES} classes "
                             f"of Fashion-MNIST (0 to {FASHION_CLASSES - 1})")
    return images, labels


def as_cifar_images(images: torch.Tensor) -> np.ndarray:
    """N x 28 x 28 gray -> N x 32 x 32 x 3 uint8: two black pixels of padding a
    side, the gray value in each of the three channels."""
    padded = F.pad(images, (2, 2, 2, 2))
    return padded.unsqueeze(-1).expand(-1, -1, -1, 3).contiguous().numpy()


def fashion_arrays(data_dir: str | Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((train images, labels), (test images, labels)): N x 32 x 32 x 3 uint8
    images (``as_cifar_images``) and int64 labels."""
    files = locate_fashion(data_dir)
    out = []
    for split in FASHION_SPLITS:
        images, labels = read_split(files, split)
        out.append((as_cifar_images(images), labels.numpy()))
    return out[0], out[1]
