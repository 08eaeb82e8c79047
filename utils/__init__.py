"""Helpers of the scripts, one module per concern; ``import utils`` gives them all.

- ``utils.cli``: the error type, argument parsing and flags, running a script, device and seed;
- ``utils.pipeline``: one script running another as its command, results kept with their settings;
- ``utils.checkpoints``: checkpoint names, atomic writes, safe loading, bases, the policy's start;
- ``utils.flops``: FLOPs per image;
- ``utils.timing``: measured time per image;
- ``utils.data``: data sets.

``utils.plots`` (the figures) is imported on its own, where figures are drawn:
matplotlib is slow to import.
"""

from models import to_flat_keys, to_standard_keys

from .checkpoints import (
    BASE_PATTERN,
    CKPT_PATTERN,
    PRETRAINED_DIR,
    atomic_write_bytes,
    base_checkpoint_name,
    checkpoint_name,
    converted_path,
    find_default_base,
    load_base,
    load_blockdrop,
    load_blockdrop_checkpoint,
    load_default_or_given_base,
    load_policy_start,
    load_state_file,
    load_weights,
    parse_base_checkpoint_name,
    parse_checkpoint_name,
    resnet18_file,
    save_args,
    save_blockdrop_checkpoint,
    save_checkpoint,
    unwrap,
    write_json,
)
from .cli import (
    NO_DOWNLOAD_ENV,
    ArgumentParser,
    BlockDropError,
    add_device_flag,
    add_model_flag,
    add_training_flags,
    choose_device,
    downloads_allowed,
    finite_float,
    nonnegative_int,
    positive_int,
    run_cli,
    seed_everything,
)
from .data import (
    CIFAR_SOURCES,
    DATASETS,
    ArrayDataset,
    cifar_arrays,
    cifar_datasets,
    digits_arrays,
    digits_as_cifar10,
    digits_datasets,
    download_cifar,
    get_datasets,
    imagenet_datasets,
    read_cifar_batches,
    write_cifar10_layout,
)
from .flops import agent_flops, module_flops, policy_flops, resnet_flop_table
from .pipeline import cached, content_sha256, load_script, run_step
from .timing import seconds_per_image
