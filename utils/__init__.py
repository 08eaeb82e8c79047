"""Helpers of the scripts, one module per concern; ``import utils`` gives the public ones.

- ``utils.cli``: the error types, argument parsing and flags, device and seed;
- ``utils.pipeline``: one script running another as its command, results kept with their settings;
- ``utils.files``: atomic writes, output-path checks, the one safe way to read a ``.t7`` file;
- ``utils.bases``: pretrained weights: the base ResNets (given, recorded or default) and the policy's start;
- ``utils.checkpoints``: BlockDrop checkpoint names, reading them, "a checkpoint, then its base";
- ``utils.config`` and ``utils.runstate``: a training run's flags, and its saved state and folder;
- ``utils.runtime`` and ``utils.distributed``: precision, memory format, loaders, several GPUs;
- ``utils.logger``: log lines, TensorBoard and ``metrics.jsonl``;
- ``utils.flops`` and ``utils.timing``: FLOPs and measured time per image;
- ``utils.data``: data sets (``utils.fashion``: where Fashion-MNIST's files are found, and reading them).

``utils.plots`` (the figures) is imported on its own, where figures are drawn:
matplotlib is slow to import.
"""

from models import to_flat_keys, to_standard_keys

from .bases import (
    BASE_PATTERN,
    PRETRAINED_DIR,
    base_checkpoint_name,
    find_default_base,
    load_base,
    load_base_for,
    load_policy_start,
    load_weights,
    parse_base_checkpoint_name,
    resnet18_file,
)
from .checkpoints import (
    CKPT_PATTERN,
    checkpoint_name,
    load_blockdrop,
    load_blockdrop_checkpoint,
    load_trained,
    parse_checkpoint_name,
)
from .cli import (
    NO_DOWNLOAD_ENV,
    ArgumentParser,
    BlockDropError,
    NonFinite,
    choose_device,
    downloads_allowed,
    run_cli,
    seed_everything,
)
from .data import (
    CIFAR_SOURCES,
    DATASETS,
    ArrayDataset,
    cifar_arrays,
    digits_arrays,
    digits_as_cifar10,
    get_datasets,
    read_cifar_batches,
    write_cifar10_layout,
)
from .files import atomic_write_bytes, converted_path, load_state_file, save_checkpoint, write_json
from .flops import agent_flops, module_flops, policy_flops, resnet_flop_table
from .pipeline import cached, content_sha256, load_script, run_step
from .timing import seconds_per_image
