"""SPEC section 8: CIFAR in the python layout (read as it is, no checksums),
the transforms, clear errors for missing data, and ImageNet image folders."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import utils
import utils.data
from conftest import CIFAR10_FOLDER, CIFAR10_TRAIN, images_to_rows, write_cifar10, write_cifar_batch
from models import get_config
from utils import BlockDropError, cifar_arrays, get_datasets, read_cifar_batches

R32_MEAN = torch.tensor([125.3, 123.0, 113.9]) / 255
R32_STD = torch.tensor([63.0, 62.1, 66.7]) / 255
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])
UNREACHABLE = "http://127.0.0.1:9/cifar-10-python.tar.gz"


def planes_row():
    """One CIFAR row written by hand: 1024 red values (row-major), then green, then blue."""
    y, x = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    red = (y * 32 + x) % 256
    green = (3 * y + 5 * x + 7) % 256
    blue = (250 - x - 2 * y) % 256
    row = np.concatenate([red.ravel(), green.ravel(), blue.ravel()]).astype(np.uint8)
    return row, np.stack([red, green, blue]).astype(np.uint8)  # row, C x H x W


# --------------------------------------------------------------------------
# the reader
# --------------------------------------------------------------------------
def test_cifar_reader_returns_all_images_and_labels(tmp_path):
    written = write_cifar10(tmp_path, n_train=3, n_test=4)
    (xtr, ytr), (xte, yte) = cifar_arrays("C10", tmp_path)
    assert xtr.shape == (15, 32, 32, 3) and xtr.dtype == np.uint8
    assert xte.shape == (4, 32, 32, 3)
    assert ytr.tolist() == written["train_labels"].tolist()
    assert yte.tolist() == written["test_labels"].tolist()
    assert np.array_equal(xte, written["test_images"])


@pytest.mark.parametrize("bytes_keys", [False, True], ids=["str-keys", "bytes-keys"])
def test_cifar_rows_are_red_then_green_then_blue_planes(tmp_path, bytes_keys):
    row, chw = planes_row()
    folder = tmp_path / CIFAR10_FOLDER
    rows = np.zeros((3, 3072), dtype=np.uint8)
    rows[1] = row
    write_cifar_batch(folder / "test_batch", rows, [4, 7, 2], bytes_keys=bytes_keys)
    images, labels = read_cifar_batches(folder, ["test_batch"], "labels")
    assert labels.tolist() == [4, 7, 2]
    assert images[1][0, 0].tolist() == [0, 7, 250]  # pixel (0, 0): R, G, B
    assert images[1][2, 5].tolist() == [69, 38, 241]  # pixel (y=2, x=5)
    assert np.array_equal(images[1].transpose(2, 0, 1), chw)


def test_test_set_item_is_the_pixel_over_255(tmp_path):
    row, chw = planes_row()
    folder = tmp_path / CIFAR10_FOLDER
    write_cifar10(tmp_path, n_test=2)
    write_cifar_batch(folder / "test_batch", np.stack([row, row[::-1]]), [3, 1])
    _, testset = get_datasets(get_config("R110_C10"), tmp_path)
    image, label = testset[0]
    assert int(label) == 3
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert torch.equal(image, torch.from_numpy(chw).float() / 255)
    assert image[0, 2, 5].item() == pytest.approx(69 / 255)


def test_cifar_files_are_read_without_a_checksum(tmp_path):
    # generated files differ from the official ones; they must load all the same
    write_cifar10(tmp_path, n_train=1, n_test=3)
    trainset, testset = get_datasets(get_config("R110_C10"), tmp_path)
    assert len(trainset) == 5 and len(testset) == 3


def test_cifar100_reads_fine_labels_from_train_and_test(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-100-python"
    imgs = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    write_cifar_batch(folder / "train", images_to_rows(imgs), [99, 0, 50, 7], label_key="fine_labels")
    write_cifar_batch(folder / "test", images_to_rows(imgs[:2]), [12, 98], label_key="fine_labels")
    trainset, testset = get_datasets(get_config("R110_C100"), tmp_path)
    assert [int(testset[i][1]) for i in range(2)] == [12, 98]
    assert len(trainset) == 4 and int(trainset[0][1]) == 99


# --------------------------------------------------------------------------
# transforms
# --------------------------------------------------------------------------
def _crops_and_flips(image: torch.Tensor):
    padded = torch.nn.functional.pad(image, (4, 4, 4, 4))
    for dy in range(9):
        for dx in range(9):
            crop = padded[:, dy:dy + 32, dx:dx + 32]
            yield crop
            yield crop.flip(-1)


def test_train_transform_gives_a_padded_random_crop_or_flip_in_0_1(tmp_path):
    written = write_cifar10(tmp_path, n_train=2, n_test=1)
    trainset, _ = get_datasets(get_config("R110_C10"), tmp_path)
    original = torch.from_numpy(written["train_images"][0]).permute(2, 0, 1).float() / 255
    torch.manual_seed(0)
    seen = set()
    for _ in range(8):
        image, label = trainset[0]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        assert image.min() >= 0 and image.max() <= 1
        assert int(label) == int(written["train_labels"][0])
        matches = [i for i, c in enumerate(_crops_and_flips(original)) if torch.equal(c, image)]
        assert matches, "not a 32x32 crop of the 4-padded image (or its mirror)"
        seen.add(matches[0])
    assert len(seen) > 1  # it is random


def test_r32_c10_test_transform_normalises_with_the_base_models_statistics(tmp_path):
    written = write_cifar10(tmp_path, n_test=2)
    _, testset = get_datasets(get_config("R32_C10"), tmp_path)
    raw = torch.from_numpy(written["test_images"][1]).permute(2, 0, 1).float() / 255
    expected = (raw - R32_MEAN.view(3, 1, 1)) / R32_STD.view(3, 1, 1)
    assert torch.allclose(testset[1][0], expected, atol=1e-5)


def test_r32_c10_train_transform_normalises_the_padded_crop(tmp_path):
    written = write_cifar10(tmp_path, n_train=1, n_test=1)
    trainset, _ = get_datasets(get_config("R32_C10"), tmp_path)
    original = torch.from_numpy(written["train_images"][0]).permute(2, 0, 1).float() / 255
    torch.manual_seed(1)
    image, _ = trainset[0]
    assert image.shape == (3, 32, 32)
    assert image.min() < 0  # normalised, so no longer in [0, 1]
    restored = image * R32_STD.view(3, 1, 1) + R32_MEAN.view(3, 1, 1)
    assert any(torch.allclose(c, restored, atol=1e-5) for c in _crops_and_flips(original))


@pytest.mark.parametrize("name", ["R110_C10", "R32_C100", "R110_C100"])
def test_other_cifar_models_do_not_normalise(tmp_path, name):
    cfg = get_config(name)
    if cfg.dataset == "C10":
        written = write_cifar10(tmp_path, n_test=2)
        raw_image = written["test_images"][1]
    else:
        rng = np.random.default_rng(1)
        imgs = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
        folder = tmp_path / "cifar-100-python"
        write_cifar_batch(folder / "train", images_to_rows(imgs), [1, 2], label_key="fine_labels")
        write_cifar_batch(folder / "test", images_to_rows(imgs), [1, 2], label_key="fine_labels")
        raw_image = imgs[1]
    _, testset = get_datasets(cfg, tmp_path)
    assert torch.equal(testset[1][0], torch.from_numpy(raw_image).permute(2, 0, 1).float() / 255)


# --------------------------------------------------------------------------
# missing data
# --------------------------------------------------------------------------
def test_missing_cifar_with_a_failing_download_names_the_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("BLOCKDROP_NO_DOWNLOAD", raising=False)
    data_dir = tmp_path / "nodata"
    with pytest.raises(BlockDropError) as info:
        cifar_arrays("C10", data_dir, UNREACHABLE)
    assert str(data_dir / CIFAR10_FOLDER) in str(info.value)
    assert not data_dir.exists()  # no folder made, no half-downloaded archive left
    assert "downloading" not in capsys.readouterr().err  # nothing said before the network answered


def test_missing_cifar_with_no_download_set_names_the_folder_and_skips_the_network(tmp_path, monkeypatch):
    monkeypatch.setenv("BLOCKDROP_NO_DOWNLOAD", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("BLOCKDROP_NO_DOWNLOAD=1 must not try the network")

    monkeypatch.setattr(utils.data, "download_cifar", no_network)
    monkeypatch.setattr(utils.data.urllib.request, "urlopen", no_network)
    data_dir = tmp_path / "nodata"
    with pytest.raises(BlockDropError) as info:
        get_datasets(get_config("R110_C10"), data_dir)
    assert str(data_dir / CIFAR10_FOLDER) in str(info.value)


def test_incomplete_cifar_folder_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("BLOCKDROP_NO_DOWNLOAD", "1")
    write_cifar10(tmp_path)
    (tmp_path / CIFAR10_FOLDER / CIFAR10_TRAIN[2]).unlink()
    with pytest.raises(BlockDropError, match="data_batch_3"):
        get_datasets(get_config("R110_C10"), tmp_path)


def test_a_file_that_is_not_a_cifar_batch_is_an_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("BLOCKDROP_NO_DOWNLOAD", "1")
    write_cifar10(tmp_path)
    (tmp_path / CIFAR10_FOLDER / "test_batch").write_text("not a pickle\n")
    with pytest.raises(BlockDropError, match="test_batch"):
        get_datasets(get_config("R110_C10"), tmp_path)


# --------------------------------------------------------------------------
# ImageNet image folders
# --------------------------------------------------------------------------
COLOURS = {"cat": (200, 30, 90), "dog": (10, 220, 140)}


def write_image_folder(root, splits=("train", "val")):
    for split in splits:
        for cls, colour in COLOURS.items():
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i, size in enumerate([(300, 260), (256, 320)]):
                Image.new("RGB", size, colour).save(folder / f"{cls}_{i}.png")


def test_imagenet_folders_load_as_224_crops(tmp_path):
    write_image_folder(tmp_path)
    trainset, valset = get_datasets(get_config("R101_ImgNet"), tmp_path)
    assert len(trainset) == 4 and len(valset) == 4
    for dataset in (trainset, valset):
        image, label = dataset[3]
        assert image.shape == (3, 224, 224) and image.dtype == torch.float32
        assert int(label) == 1  # classes in sorted order: cat 0, dog 1
    assert int(valset[0][1]) == 0


def test_imagenet_val_images_are_normalised_with_imagenet_statistics(tmp_path):
    write_image_folder(tmp_path)
    _, valset = get_datasets(get_config("R101_ImgNet"), tmp_path)
    image, _ = valset[2]  # a solid "dog" image
    expected = (torch.tensor(COLOURS["dog"]) / 255 - IMAGENET_MEAN) / IMAGENET_STD
    assert torch.allclose(image, expected.view(3, 1, 1).expand(3, 224, 224), atol=1e-5)


def test_imagenet_without_val_folder_is_an_error(tmp_path):
    write_image_folder(tmp_path, splits=("train",))
    with pytest.raises(BlockDropError) as info:
        get_datasets(get_config("R101_ImgNet"), tmp_path)
    assert str(tmp_path / "val") in str(info.value)


def test_digits_written_in_the_cifar10_layout_read_back_exactly(tmp_path):
    (xtr, ytr), (xte, yte) = utils.digits_arrays()
    folder = utils.digits_as_cifar10(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*CIFAR10_TRAIN, "test_batch"])
    (rtr, rtr_labels), (rte, rte_labels) = cifar_arrays("C10", tmp_path)
    assert np.array_equal(rtr, xtr) and np.array_equal(rtr_labels, ytr)
    assert np.array_equal(rte, xte) and np.array_equal(rte_labels, yte)
    # the rows are CIFAR's: 1024 red values, then green, then blue
    with open(folder / "test_batch", "rb") as fh:
        entry = pickle.load(fh, encoding="latin1")
    assert np.array_equal(entry["data"], images_to_rows(xte)) and entry["labels"] == yte.tolist()
    train, test = get_datasets(get_config("R32_C10"), tmp_path)
    assert (len(train), len(test)) == (1437, 360)


def test_a_training_subset_is_balanced_fixed_and_refuses_more_than_there_is(tmp_path):
    from utils.data import balanced_subset

    labels = np.repeat(np.arange(10), [30, 30, 30, 30, 30, 30, 30, 30, 30, 5])
    keep = balanced_subset(labels, 43, 10)
    assert len(keep) == 43 == len(set(keep)) and list(keep) == sorted(keep)
    assert list(np.bincount(labels[keep], minlength=10)) == [5, 5, 5, 4, 4, 4, 4, 4, 4, 4]
    assert list(balanced_subset(labels, 43, 10)) == list(keep)  # the same images each time
    with pytest.raises(BlockDropError, match="class 9 has 5"):
        balanced_subset(labels, 80, 10)
    with pytest.raises(BlockDropError, match="only 275"):
        balanced_subset(labels, 1000, 10)
    write_cifar10(tmp_path, n_train=20)  # 100 images
    full, _ = get_datasets(get_config("R110_C10"), tmp_path)
    part, test = get_datasets(get_config("R110_C10"), tmp_path, train_subset=20)
    assert len(full) == 100 and len(part) == 20 and len(test) > 0
    index = balanced_subset(np.asarray(full.labels), 20, 10)
    assert torch.equal(part.images, full.images[torch.from_numpy(index)])
