"""Helpers of the scripts, one module per concern; ``import utils`` gives the public ones.

- ``utils.errors``: the error types (a leaf: it imports nothing of the project);
- ``utils.cli``: argument parsing, the flag groups, running a script's ``main``;
- ``utils.pipeline``: one script running another as its command, results kept with their settings;
- ``utils.files``: atomic writes, output-path checks, the one safe way to read a ``.t7`` file, downloads;
- ``utils.bases``: pretrained weights: the base ResNets (given, recorded or default) and the policy's start;
- ``utils.checkpoints``: reading BlockDrop checkpoints, "a checkpoint, then its base";
- ``utils.config`` and ``utils.runstate``: a training run's flags, and its saved state, folder and checkpoint names;
- ``utils.distributed``: the device, the processes under torchrun, the main process;
- ``utils.runtime``: seed, precision, memory format, loaders, progress bars, several GPUs;
- ``utils.logger``: log lines, TensorBoard and ``metrics.jsonl``;
- ``utils.flops`` and ``utils.timing``: FLOPs and measured time per image;
- ``utils.data``: data sets (``utils.fashion``: where Fashion-MNIST's files are found, and reading them).

Nothing is imported until it is asked for (``utils.load_blockdrop`` imports
``utils.checkpoints`` then), so that a module needing one helper does not load
every data set. ``utils.plots`` (the figures) is imported on its own, where
figures are drawn: matplotlib is slow to import.
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "models": ["to_flat_keys", "to_standard_keys"],
    ".bases": ["BASE_PATTERN", "PRETRAINED_DIR", "base_checkpoint_name", "find_default_base", "load_base",
               "load_base_for", "load_policy_start", "load_weights", "parse_base_checkpoint_name", "resnet18_file"],
    ".checkpoints": ["load_blockdrop", "load_blockdrop_checkpoint", "load_trained"],
    ".runstate": ["CKPT_PATTERN", "checkpoint_name", "parse_checkpoint_name"],
    ".cli": ["ArgumentParser", "run_cli"],
    ".errors": ["BlockDropError", "NonFinite"],
    ".distributed": ["choose_device"],
    ".runtime": ["seed_everything"],
    ".data": ["CIFAR_SOURCES", "DATASETS", "ArrayDataset", "cifar_arrays", "digits_arrays", "digits_as_cifar10",
              "get_datasets", "read_cifar_batches", "write_cifar10_layout"],
    ".files": ["NO_DOWNLOAD_ENV", "atomic_write_bytes", "converted_path", "downloads_allowed", "load_state_file",
               "save_checkpoint", "write_json"],
    ".flops": ["agent_flops", "module_flops", "policy_flops", "resnet_flop_table"],
    ".pipeline": ["cached", "content_sha256", "load_script", "run_script"],
    ".timing": ["seconds_per_image"],
}
_HOME = {name: module for module, names in _PUBLIC.items() for name in names}
_MODULES = {"bases", "checkpoints", "cli", "config", "data", "distributed", "errors", "fashion", "files", "flops",
            "logger", "pipeline", "plots", "runstate", "runtime", "timing"}

__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name in _HOME:
        value = getattr(importlib.import_module(_HOME[name], __name__), name)
    elif name in _MODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME, *_MODULES})
