"""Fashion-MNIST: its IDX files found in --data_dir (torchvision's layout), in the
Debian package's folder or by a download; the images as the CIFAR ResNets take
them; one line for missing, truncated or wrong files. The IDX files are tiny
ones written here, so nothing depends on the package being installed."""

from __future__ import annotations

import functools
import gzip
import http.server
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_data import _crops_and_flips
from torchvision import datasets as tv_datasets

import utils.fashion
from conftest import assert_one_line_error, run_main
from models import get_config
from utils import BlockDropError, get_datasets
from utils.pipeline import load_script

MEAN, STD = 0.2860, 0.3530  # the 60,000 training images' own, computed from the files
NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
ALL_NAMES = [name for pair in NAMES.values() for name in pair]


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file as the format is described: two zero bytes, the type (8: unsigned
    byte), the number of dimensions, each dimension big-endian in 32 bits, the values."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_fashion(folder: Path, n_train: int = 12, n_test: int = 5, gz: bool = True, seed: int = 0) -> dict:
    """The four files in ``folder`` (gzip'd or plain); returns what they hold."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        for name, array in zip(NAMES[split], (images, labels)):
            data = idx_bytes(array)
            (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
        written[split] = (images, labels.astype(np.int64))
    return written


@pytest.fixture
def no_debian(tmp_path, monkeypatch):
    """No Debian package folder, whether or not this machine has the package."""
    monkeypatch.setattr(utils.fashion, "DEBIAN_FASHION_DIR", tmp_path / "no-package")


def as_input(gray: np.ndarray) -> torch.Tensor:
    """What the network gets for a 28x28 gray image: padded by 2 with black,
    in three channels, normalised with the data set's mean and std."""
    padded = F.pad(torch.from_numpy(gray).float() / 255, (2, 2, 2, 2))
    return ((padded - MEAN) / STD).expand(3, 32, 32)


# --------------------------------------------------------------------------
# reading, and the images the networks get
# --------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "plain"])
def test_files_in_data_dir_read_as_padded_three_channel_normalised_images(tmp_path, no_debian, gz):
    written = write_fashion(tmp_path / "data" / "FashionMNIST" / "raw", gz=gz)
    trainset, testset = get_datasets(get_config("R8_Fashion"), tmp_path / "data")
    assert (len(trainset), len(testset)) == (12, 5)
    for i in range(5):
        image, label = testset[i]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        assert torch.allclose(image, as_input(written["test"][0][i]), atol=1e-5)
        assert int(label) == written["test"][1][i]
    assert testset[0][0][:, 0, 0].tolist() == pytest.approx([-MEAN / STD] * 3)  # the black border
    assert trainset.labels.tolist() == written["train"][1].tolist()


def test_train_item_is_a_padded_crop_or_flip_of_the_32x32_image(tmp_path, no_debian):
    written = write_fashion(tmp_path / "data" / "FashionMNIST" / "raw")
    trainset, _ = get_datasets(get_config("R20_Fashion"), tmp_path / "data")
    original = as_input(written["train"][0][3]) * STD + MEAN
    torch.manual_seed(0)
    seen = set()
    for _ in range(8):
        restored = trainset[3][0] * STD + MEAN
        matches = [i for i, c in enumerate(_crops_and_flips(original)) if torch.allclose(c, restored, atol=1e-5)]
        assert matches, "not a 32x32 crop of the 4-padded image (or its mirror)"
        seen.add(matches[0])
    assert len(seen) > 1


def test_every_configuration_normalises_with_the_data_sets_own_mean_and_std():
    for depth in (8, 14, 20, 32, 56, 110):
        cfg = get_config(f"R{depth}_Fashion")
        assert cfg.dataset == "Fashion" and cfg.num_classes == 10 and cfg.input_size == 32
        assert cfg.normalize == ((MEAN,) * 3, (STD,) * 3)
        assert cfg.pretrained == f"R{depth}_Fashion/pk_E_<epoch>_A_<acc>.t7"


# --------------------------------------------------------------------------
# where the files are found
# --------------------------------------------------------------------------
def test_the_debian_folder_is_read_in_place_when_data_dir_has_no_copy(tmp_path, monkeypatch):
    package = tmp_path / "usr-share-datasets-fashion-mnist"
    written = write_fashion(package, n_train=4, n_test=3)
    monkeypatch.setattr(utils.fashion, "DEBIAN_FASHION_DIR", package)
    before = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in package.iterdir()}
    trainset, testset = get_datasets(get_config("R8_Fashion"), tmp_path / "data")
    assert (len(trainset), len(testset)) == (4, 3)
    assert testset.labels.tolist() == written["test"][1].tolist()
    assert {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in package.iterdir()} == before
    assert not (tmp_path / "data").exists()  # nothing copied


def test_a_copy_in_data_dir_comes_before_the_debian_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(utils.fashion, "DEBIAN_FASHION_DIR", tmp_path / "package")
    write_fashion(tmp_path / "package", n_train=4, n_test=3, seed=1)
    ours = write_fashion(tmp_path / "data" / "FashionMNIST" / "raw", n_train=6, n_test=2, gz=False, seed=2)
    trainset, testset = get_datasets(get_config("R8_Fashion"), tmp_path / "data")
    assert (len(trainset), len(testset)) == (6, 2)
    assert testset.labels.tolist() == ours["test"][1].tolist()


@pytest.mark.parametrize("present", [[], ALL_NAMES[:3]], ids=["none", "three-of-four"])
def test_missing_data_is_one_line_naming_the_package_the_make_target_and_the_download(tmp_path, no_debian,
                                                                                       present):
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    write_fashion(raw)
    for name in set(ALL_NAMES) - set(present):
        (raw / f"{name}.gz").unlink()
    with pytest.raises(BlockDropError) as info:
        get_datasets(get_config("R8_Fashion"), tmp_path / "data")
    message = str(info.value)
    assert "\n" not in message and str(raw) in message
    for way in ("dataset-fashion-mnist", "make fashion-data", "download", "BLOCKDROP_NO_DOWNLOAD is set"):
        assert way in message


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """torchvision's FashionMNIST download made from a folder served on this machine
    (no checksums: the files are tiny ones), with downloads allowed; yields the folder."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=folder))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.delenv("BLOCKDROP_NO_DOWNLOAD", raising=False)
    monkeypatch.setattr(tv_datasets.FashionMNIST, "mirrors", [f"http://127.0.0.1:{server.server_port}/"])
    monkeypatch.setattr(tv_datasets.FashionMNIST, "resources", [(f"{name}.gz", None) for name in ALL_NAMES])
    yield folder
    server.shutdown()
    server.server_close()
    thread.join()


def test_downloads_into_data_dir_in_torchvisions_layout_when_allowed(tmp_path, no_debian, mirror):
    written = write_fashion(mirror, n_train=3, n_test=2)
    _, testset = get_datasets(get_config("R8_Fashion"), tmp_path / "data")
    assert testset.labels.tolist() == written["test"][1].tolist()
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    assert {p.name for p in raw.iterdir()} >= {f"{name}.gz" for name in ALL_NAMES}


def test_a_failed_download_is_one_line_that_says_so_and_names_the_other_ways(tmp_path, no_debian, mirror):
    with pytest.raises(BlockDropError) as info:
        get_datasets(get_config("R8_Fashion"), tmp_path / "data")
    message = str(info.value)
    assert "\n" not in message and "download failed" in message
    assert "dataset-fashion-mnist" in message and "make fashion-data" in message


# --------------------------------------------------------------------------
# files that are not Fashion-MNIST's
# --------------------------------------------------------------------------
def cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


SPOILED = {  # name: (gzip'd files?, what to do to the folder, the file the message names)
    "truncated gzip": (True, lambda raw: cut(raw / "train-images-idx3-ubyte.gz"), "train-images-idx3-ubyte.gz"),
    "truncated images": (False, lambda raw: cut(raw / "t10k-images-idx3-ubyte"), "t10k-images-idx3-ubyte"),
    "truncated labels": (False, lambda raw: cut(raw / "train-labels-idx1-ubyte", 0.9), "train-labels-idx1-ubyte"),
    "header only": (False, lambda raw: cut(raw / "t10k-labels-idx1-ubyte", 0.01), "t10k-labels-idx1-ubyte"),
    "text": (True, lambda raw: (raw / "t10k-labels-idx1-ubyte.gz").write_text("not gzip\n"), "t10k-labels-idx1"),
    "text in gzip": (True, lambda raw: (raw / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"<html>")),
                     "t10k-images-idx3-ubyte.gz"),
    "empty": (False, lambda raw: (raw / "train-images-idx3-ubyte").write_bytes(b""), "train-images-idx3-ubyte"),
    "label 10": (False, lambda raw: (raw / "t10k-labels-idx1-ubyte").write_bytes(
        idx_bytes(np.array([1, 10, 2, 3, 4]))), "t10k-labels-idx1-ubyte"),
    "fewer labels": (False, lambda raw: (raw / "train-labels-idx1-ubyte").write_bytes(
        idx_bytes(np.arange(11) % 10)), "train-labels-idx1-ubyte"),
    "labels as images": (False, lambda raw: (raw / "t10k-images-idx3-ubyte").write_bytes(
        idx_bytes(np.zeros(5))), "t10k-images-idx3-ubyte"),
    "27x27": (False, lambda raw: (raw / "t10k-images-idx3-ubyte").write_bytes(
        idx_bytes(np.zeros((5, 27, 27)))), "t10k-images-idx3-ubyte"),
}


@pytest.mark.parametrize("case", SPOILED)
def test_a_wrong_or_truncated_file_is_one_line_naming_it(tmp_path, no_debian, case):
    gz, spoil, named = SPOILED[case]
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    write_fashion(raw, gz=gz)
    spoil(raw)
    with pytest.raises(BlockDropError) as info:
        get_datasets(get_config("R8_Fashion"), tmp_path / "data")
    message = str(info.value)
    assert "\n" not in message and str(raw / named) in message


# --------------------------------------------------------------------------
# pretrain.py on it
# --------------------------------------------------------------------------
def test_pretrain_runs_with_no_data_dir_on_the_debian_folder_and_refuses_a_cut_file_in_one_line(tmp_path,
                                                                                               monkeypatch):
    package = tmp_path / "package"
    write_fashion(package, n_train=16, n_test=8)
    monkeypatch.setattr(utils.fashion, "DEBIAN_FASHION_DIR", package)
    flags = ["--model", "R8_Fashion", "--epochs", "1", "--batch_size", "8", "--workers", "0", "--device", "cpu",
             "--seed", "0"]
    result = run_main(load_script("pretrain"), *flags, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "cv" / "pretrained" / "R8_Fashion").glob("pk_E_1_A_*.t7"))) == 1
    cut(package / "train-labels-idx1-ubyte.gz")
    line = assert_one_line_error(run_main(load_script("pretrain"), *flags, "--cv_dir", "other", cwd=tmp_path))
    assert str(package / "train-labels-idx1-ubyte.gz") in line
