"""``--device_data``: the data set held on the device as one uint8 tensor, its
batches cropped, flipped and normalised there. The crops and flips are the ones
drawn, every image comes once an epoch, the test batches are the DataLoader's
exactly, the digits are never flipped, the scripts run with it (and a resumed
base run ends as the uninterrupted one), and ImageNet's folders are refused in
one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

import cl_training
import finetune
from conftest import assert_one_line_error, cifar_folder, run_main
from utils import BlockDropError
from utils.data import ArrayDataset, _cifar_transforms, digits_datasets
from utils.device_data import Augment, DeviceData, augment_of, device_loaders
from utils.distributed import Processes
from utils.pipeline import load_script
from utils.runtime import data_loaders, to_device

pretrain = load_script("pretrain")
NORMALIZE = ((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


def arrays(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)


def cifar_sets(n: int = 21, normalize=NORMALIZE) -> tuple[ArrayDataset, ArrayDataset]:
    train_tf, test_tf = _cifar_transforms(normalize)
    return ArrayDataset(*arrays(n), train_tf), ArrayDataset(*arrays(n, 1), test_tf)


def test_the_transforms_of_each_data_set_are_described():
    train, test = _cifar_transforms(NORMALIZE)
    assert augment_of(train, (32, 32)) == Augment(4, 0.5, *NORMALIZE)
    assert augment_of(test, (32, 32)) == Augment(0, 0.0, *NORMALIZE)
    assert augment_of(None, (32, 32)) == Augment()
    with pytest.raises(BlockDropError, match="ColorJitter"):
        augment_of(T.Compose([T.ColorJitter(0.1)]), (32, 32))


def test_a_batch_is_the_drawn_crops_and_flips_done_by_hand():
    trainset, _ = cifar_sets()
    data = DeviceData(trainset, torch.device("cpu"), train=True)
    index = torch.tensor([3, 0, 17, 3, 9, 12, 20, 5])
    batch = data.batch(index, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)  # the same numbers, in the same order
    top, left = torch.randint(0, 9, (2, len(index)), generator=g)
    flips = torch.rand(len(index), generator=g) < 0.5
    assert 0 < int(flips.sum()) < len(index)  # both kinds in the batch
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in NORMALIZE)
    for i, k in enumerate(index.tolist()):
        image = F.pad(trainset.images[k].permute(2, 0, 1).float() / 255, (4, 4, 4, 4))
        crop = image[:, top[i]:top[i] + 32, left[i]:left[i] + 32]
        crop = crop.flip(2) if flips[i] else crop
        assert torch.equal(batch[i], (crop - mean) / std), i


def test_every_image_comes_once_an_epoch_in_the_data_loaders_batch_sizes():
    trainset, testset = cifar_sets(21)
    train, _ = device_loaders(trainset, testset, Processes(), 8, seed=0)
    reference, _ = data_loaders(trainset, testset, Processes(), 8, 0, seed=0)
    epochs = []
    for _ in range(2):
        batches = list(train)
        assert [len(b[2]) for b in batches] == [len(b[2]) for b in reference] == [8, 8, 5]
        images, targets, index = (torch.cat(parts) for parts in zip(*batches))
        assert sorted(index.tolist()) == list(range(21)) and len(train) == len(reference) == 3
        assert torch.equal(targets, trainset.labels[index]) and images.shape == (21, 3, 32, 32)
        assert to_device(images, images.device) is images  # on the device already: the engine moves nothing
        epochs.append(index)
    assert not torch.equal(*epochs)  # a new shuffle each epoch


def test_under_torchrun_each_process_gets_its_share_of_one_shuffle():
    trainset, testset = cifar_sets(10)
    shares, tests = [], []
    for rank in range(3):
        train, test = device_loaders(trainset, testset, Processes(rank, 3), 2, seed=5)
        train.set_epoch(1)
        shares.append(torch.cat([b[2] for b in train]))
        tests.append(torch.cat([b[2] for b in test]))
    assert [len(s) for s in shares] == [4, 4, 4]  # padded to even shares, as DistributedSampler pads
    assert set(torch.cat(shares).tolist()) == set(range(10))
    assert [t.tolist() for t in tests] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]


@pytest.mark.parametrize("normalize", [NORMALIZE, None], ids=["normalised", "not normalised"])
def test_the_test_batches_are_the_data_loaders_exactly(normalize):
    trainset, testset = cifar_sets(21, normalize)
    _, test = device_loaders(trainset, testset, Processes(), 4, seed=0, test_batch_size=8)
    _, reference = data_loaders(trainset, testset, Processes(), 4, 0, seed=0, test_batch_size=8)
    pairs = list(zip(test, reference, strict=True))
    for ours, theirs in pairs:
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_the_digits_are_cropped_never_flipped_nor_normalised():
    trainset, testset = digits_datasets(None)
    assert DeviceData(trainset, torch.device("cpu"), train=True).augment == Augment(4, 0.0)
    data = DeviceData(testset, torch.device("cpu"), train=False)
    assert data.augment == Augment() and torch.equal(data.batch(torch.arange(3)),
                                                     testset.images[:3].permute(0, 3, 1, 2).float() / 255)


# --------------------------------------------------------------------------
# the scripts
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return cifar_folder(tmp_path_factory.mktemp("device_data"), n_train=2, n_test=4, seed=2)  # 10 train images


def flags(*extra) -> list:
    return ["--model", "R32_C10", "--data_dir", "data", "--device", "cpu", "--batch_size", "4", "--seed", "0",
            "--workers", "0", *extra, "--device_data"]


@pytest.mark.parametrize("script", [cl_training, finetune], ids=["cl_training", "finetune"])
def test_the_rl_scripts_run_with_device_data(folder, script):
    result = run_main(script, *flags("--base", "base.t7", "--max_epochs", "1", "--cv_dir", f"cv/{script.__name__}"),
                      cwd=folder)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "E: 1" in result.stdout and "TS - A:" in result.stdout
    assert torch.load(folder / "cv" / script.__name__ / "last.t7", weights_only=True)["args"]["device_data"]


def test_a_resumed_base_run_with_device_data_ends_as_the_uninterrupted_one(folder):
    def base(*extra):
        result = run_main(pretrain, *flags("--milestones", "2", *extra), cwd=folder)
        assert result.returncode == 0, result.stderr[-2000:]
        return result

    base("--epochs", "2", "--cv_dir", "cv/whole")
    base("--epochs", "1", "--cv_dir", "cv/stopped")
    assert "after epoch 1" in base("--resume", "--cv_dir", "cv/stopped", "--epochs", "2").stdout
    a, b = (torch.load(next((folder / "cv" / f).glob("pk_E_2_*.t7")), weights_only=True)["state_dict"]
            for f in ("whole", "stopped"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_device_data_cannot_change_when_a_run_is_resumed(folder):
    """It draws other random numbers: a run goes on as it began."""
    first = run_main(cl_training, *flags("--base", "base.t7", "--max_epochs", "0", "--cv_dir", "cv/fixed")[:-1],
                     cwd=folder)
    assert first.returncode == 0, first.stderr[-2000:]
    line = assert_one_line_error(run_main(cl_training, "--resume", "--cv_dir", "cv/fixed", "--device_data",
                                          cwd=folder))
    assert "--device_data" in line


@pytest.mark.parametrize("script", [cl_training, pretrain], ids=["cl_training", "pretrain"])
def test_imagenet_folders_are_refused_in_one_line(tmp_path, script):
    for split in ("train", "val"):
        (tmp_path / "imagenet" / split / "bird").mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "imagenet" / split / "bird" / "0.png")
    result = run_main(script, "--model", "R101_ImgNet", "--data_dir", "imagenet", "--device", "cpu",
                      "--device_data", "--cv_dir", "cv/imagenet", cwd=tmp_path)
    line = assert_one_line_error(result)
    assert "--device_data" in line and "ImageFolder" in line
    assert not (tmp_path / "cv").exists()  # refused before the run folder is made
