"""``--device_data``: the data set held on the training device as one uint8
tensor (N x 3 x H x W) with its labels, shuffled there and augmented there in
whole batches; no DataLoader and no workers. The batches are what
``utils.runtime.data_loaders`` gives, ``(images, targets, index)``, with the
images (and the training targets) on the device already.

It does the data set's own transforms, in distribution: CIFAR's zero-padded
random crop, the horizontal flip, division by 255 and the normalisation, read
from the data set's transform (``Augment``). It draws other random numbers
than the DataLoader path (one permutation and one crop and flip per batch, from
the loader's own generator on the device), which is why it is opt-in. Each
epoch the generator is seeded with one number drawn from torch's global CPU
generator, whose state every saved run state holds, so a resumed run draws the
same batches; under torchrun from ``--seed`` and the epoch, as
DistributedSampler does, the same permutation on every process."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision import transforms as T

from .distributed import Processes
from .errors import BlockDropError


@dataclass(frozen=True)
class Augment:
    """What a data set's transform does to a float image in [0, 1]: a random
    crop of the image's size after zero padding of ``crop_padding`` pixels (0:
    none), a horizontal flip with probability ``flip``, then ``(x - mean) / std``
    (``mean`` None: no normalisation)."""

    crop_padding: int = 0
    flip: float = 0.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


def augment_of(transform, size: tuple[int, int]) -> Augment:
    """The ``Augment`` of a data set's transform (None, one transform or a
    ``Compose``), or one BlockDropError naming a transform it has no device form of."""
    steps = transform.transforms if isinstance(transform, T.Compose) else [] if transform is None else [transform]
    out = Augment()
    for step in steps:
        if out.mean is not None:
            raise BlockDropError(f"--device_data: {step!r} comes after the normalisation; run without --device_data")
        if _zero_padded_crop(step, size):
            out = Augment(int(step.padding), out.flip)
        elif isinstance(step, T.RandomHorizontalFlip):
            out = Augment(out.crop_padding, float(step.p))
        elif isinstance(step, T.Normalize) and not step.inplace:
            out = Augment(out.crop_padding, out.flip, tuple(map(float, step.mean)), tuple(map(float, step.std)))
        else:
            raise BlockDropError(f"--device_data does not do the data set's transform {step!r} on the device; "
                                 "run without --device_data")
    return out


def _zero_padded_crop(step, size: tuple[int, int]) -> bool:
    """CIFAR's crop: the image's own size after the same zero padding on every side."""
    return (isinstance(step, T.RandomCrop) and tuple(step.size) == tuple(size) and isinstance(step.padding, int)
            and step.fill == 0 and step.padding_mode == "constant")


def dataset_augment(dataset, train: bool) -> Augment:
    """The ``Augment`` of a data set whose images are one N x H x W x 3 uint8
    tensor (``utils.data.ArrayDataset``), or one BlockDropError: ImageNet's image
    folders are read and decoded image by image, a test transform that is random."""
    images = getattr(dataset, "images", None)
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4 \
            or images.shape[-1] != 3:
        raise BlockDropError(f"--device_data holds a data set of images in one uint8 array (CIFAR, Fashion, the "
                             f"digits) on the device; {type(dataset).__name__} (ImageNet's image folders) is not "
                             "one: run without --device_data")
    augment = augment_of(getattr(dataset, "transform", None), tuple(images.shape[1:3]))
    if not train and (augment.crop_padding or augment.flip):
        raise BlockDropError("--device_data: the test set's transform is random; run without --device_data")
    return augment


def check_device_data(trainset, testset) -> None:
    """Refuse, before anything is written, data sets that ``--device_data`` cannot hold."""
    dataset_augment(trainset, train=True)
    dataset_augment(testset, train=False)


class DeviceData:
    """A data set on ``device``: images N x 3 x H x W uint8 (zero-padded by the
    crop's padding once, here), labels on the device and on the CPU, and its ``Augment``."""

    def __init__(self, dataset, device: torch.device, train: bool):
        self.augment = dataset_augment(dataset, train)
        images, pad = dataset.images, self.augment.crop_padding
        size = tuple(images.shape[1:3])
        chw = images.permute(0, 3, 1, 2).to(device)
        self.images = torch.nn.functional.pad(chw, (pad, pad, pad, pad)) if pad else chw.contiguous()
        self.size, self.device = size, device
        self.labels_cpu = torch.as_tensor(dataset.labels, dtype=torch.long)
        self.labels = self.labels_cpu.to(device)
        shape = (1, -1, 1, 1)
        a = self.augment
        self.mean = None if a.mean is None else torch.tensor(a.mean, device=device).view(shape)
        self.std = None if a.std is None else torch.tensor(a.std, device=device).view(shape)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The float images of ``index`` (on the device), cropped and flipped with
        ``generator``'s numbers (none without it), divided by 255 and normalised."""
        pad, (h, w), n = self.augment.crop_padding, self.size, len(index)
        rows = torch.arange(h, device=self.device).expand(n, h)
        cols = torch.arange(w, device=self.device).expand(n, w)
        if generator is not None and pad:
            top, left = (torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=self.device))
            rows, cols = rows + top[:, None], cols + left[:, None]
        elif pad:
            rows, cols = rows + pad, cols + pad
        if generator is not None and self.augment.flip:
            flip = torch.rand(n, generator=generator, device=self.device) < self.augment.flip
            cols = torch.where(flip[:, None], cols.flip(1), cols)
        channels = torch.arange(self.images.shape[1], device=self.device)
        crops = self.images[index[:, None, None, None], channels[None, :, None, None], rows[:, None, :, None],
                            cols[:, None, None, :]]
        out = crops.float().div_(255)
        return out if self.mean is None else out.sub_(self.mean).div_(self.std)


class DeviceTrainLoader:
    """The training batches: a shuffle of the data set per epoch (under
    torchrun this process's share, padded to an even share as DistributedSampler
    pads), cut into ``batch_size`` batches, the last one partial."""

    def __init__(self, data: DeviceData, procs: Processes, batch_size: int, seed: int | None):
        self.data, self.procs, self.batch_size, self.seed = data, procs, batch_size, seed or 0
        self.epoch = 0
        self.generator = torch.Generator(device=data.device)
        self.share = math.ceil(len(data) / procs.world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.share / self.batch_size)

    def __iter__(self):
        n, procs, g = len(self.data), self.procs, self.generator
        if procs.distributed:  # the same permutation on every process
            g.manual_seed(self.seed + self.epoch)
        else:  # one number of the global stream, whose state a saved run holds
            g.manual_seed(int(torch.randint(2**62, (1,))))
        perm = torch.randperm(n, generator=g, device=self.data.device)
        if procs.distributed:
            total = self.share * procs.world_size
            perm = torch.cat([perm, perm[: total - n]])[procs.rank::procs.world_size]
        perm_cpu = perm.cpu()
        for start in range(0, len(perm), self.batch_size):
            index = perm[start:start + self.batch_size]
            yield self.data.batch(index, g), self.data.labels[index], perm_cpu[start:start + self.batch_size]


class DeviceTestLoader:
    """The test batches in the data set's order (under torchrun this process's
    images ``rank, rank + world_size, ...``), not augmented; targets on the CPU, as
    the evaluation gathers them."""

    def __init__(self, data: DeviceData, procs: Processes, batch_size: int):
        self.data, self.batch_size = data, batch_size
        self.index = torch.arange(procs.rank, len(data), procs.world_size)
        self.index_device = self.index.to(data.device)

    def __len__(self) -> int:
        return math.ceil(len(self.index) / self.batch_size)

    def __iter__(self):
        for start in range(0, len(self.index), self.batch_size):
            index = self.index[start:start + self.batch_size]
            yield (self.data.batch(self.index_device[start:start + self.batch_size]), self.data.labels_cpu[index],
                   index)


def device_loaders(trainset, testset, procs: Processes, batch_size: int, seed: int | None,
                   test_batch_size: int | None = None) -> tuple[DeviceTrainLoader, DeviceTestLoader]:
    """``utils.runtime.data_loaders`` with ``--device_data``: the same batches'
    sizes and shares, the data on ``procs.device``."""
    train = DeviceTrainLoader(DeviceData(trainset, procs.device, train=True), procs, batch_size, seed)
    return train, DeviceTestLoader(DeviceData(testset, procs.device, train=False), procs,
                                   test_batch_size or batch_size)
