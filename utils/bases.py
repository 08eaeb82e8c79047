"""Pretrained weights a run starts from: the base ResNet of a configuration
(given with ``--base``, recorded by a checkpoint, or the default one under
``cv/pretrained/``, checked by SHA-256) and the ImageNet policy network's start
from torchvision's ResNet-18. ``load_weights`` is the one strict way to put a
state dict into a network."""

from __future__ import annotations

import hashlib
import pickle
import re
import sys
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn as nn

from models import PolicyNet, resnet18_weights, to_flat_keys

from .distributed import main_print
from .errors import BlockDropError
from .files import converted_path, downloads_allowed, first_line, load_state_file

PRETRAINED_DIR = Path("cv/pretrained")  # relative to the working directory, as in the original
BASE_PATTERN = re.compile(r"pk_E_(?P<epoch>\d+)_A_(?P<acc>[0-9.]+)\.t7$")


def base_checkpoint_name(epoch: int, acc: float) -> str:
    return f"pk_E_{epoch}_A_{acc:.3f}.t7"


def parse_base_checkpoint_name(name: str | Path) -> dict:
    m = BASE_PATTERN.search(Path(name).name)
    if not m:
        raise ValueError(f"{name} is not named like a pretrained base")
    return {"epoch": int(m["epoch"]), "acc": float(m["acc"])}


# --------------------------------------------------------------------------
# state dicts into networks
# --------------------------------------------------------------------------
def unwrap_state(obj: object, path: Path, keys: Iterable[str]) -> dict:
    """The state dict inside a file's contents: under one of ``keys``, or the whole dict of tensors."""
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
    (``features.fc.*`` of old agents); ``module.`` prefixes are dropped. A
    mismatch is one line naming the file."""
    state = to_flat_keys({k: v for k, v in state.items() if not k.startswith("features.fc.")})
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise BlockDropError(f"{path}: the {what} entry {not_tensors[0]!r} is not a tensor")
    not_finite = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if not_finite:
        raise BlockDropError(f"{path}: the {what} holds values that are not finite (nan or inf), "
                             f"in {len(not_finite)} tensor(s) such as {not_finite[0]!r}")
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that do not fit
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip().startswith("size mismatch")]
        raise BlockDropError(f"{path}: the {what} does not fit: {lines[0] if lines else first_line(exc)}") from exc
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    parts = [f"missing {len(missing)} key(s) such as {missing[0]!r}"] if missing else []
    if result.unexpected_keys:
        parts.append(f"{len(result.unexpected_keys)} unexpected key(s) such as {result.unexpected_keys[0]!r}")
    if parts:
        raise BlockDropError(f"{path}: the {what} does not fit: {'; '.join(parts)}")


def same_configuration(path: Path, recorded: object, model_name: str) -> None:
    """A file that records the configuration it was trained for is used for
    that one only (networks of two configurations can have the same shapes:
    R32_C10 and R32_Digits); the authors' files record none."""
    if isinstance(recorded, str) and recorded != model_name:
        raise BlockDropError(f"{path}: was trained for {recorded}, not {model_name}; pass --model {recorded}, "
                             f"or a file of {model_name}")


def load_base(resnet: nn.Module, path: Path, model_name: str) -> dict:
    """A pretrained base ResNet in the standard layout (``state_dict`` wrapper,
    a plain state dict or torchvision's ResNet keys, ``module.`` prefixes)."""
    obj = load_state_file(path)
    if isinstance(obj, dict):
        same_configuration(path, obj.get("model"), model_name)
    state = unwrap_state(obj, path, ("state_dict", "model", "resnet", "net"))
    load_weights(resnet, state, path, f"{model_name} base ResNet")
    return obj if isinstance(obj, dict) else {}


# --------------------------------------------------------------------------
# which base: given, recorded, or the configuration's default
# --------------------------------------------------------------------------
def find_default_base(config) -> Path | None:
    """The configuration's default base (SPEC section 1), its plain state dict
    written by ``convert_base.py`` when there is one, or, when that file is
    absent, the newest ``pk_E_<epoch>_A_<acc>.t7`` that ``pretrain.py`` wrote
    in the same folder (the highest epoch, then the highest accuracy), or, for
    ResNet-101, torchvision's ImageNet weights in the torch hub cache."""
    path = PRETRAINED_DIR / config.pretrained
    if converted_path(path).is_file():  # the default file was a pickle, converted by convert_base.py
        return converted_path(path)
    if path.is_file():
        return path
    candidates = []
    if path.parent.is_dir():
        for f in path.parent.glob("pk_E_*_A_*.t7"):
            try:
                parsed = parse_base_checkpoint_name(f)
            except ValueError:
                continue
            candidates.append((parsed["epoch"], parsed["acc"], f))
    if candidates:
        return max(candidates)[2]
    if config.torchvision_base:
        hub = Path(torch.hub.get_dir()) / "checkpoints" / Path(config.torchvision_base).name
        if hub.is_file():
            return hub
    return None


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def choose_base(config, given: str | None, recorded: dict | None = None, source: Path | None = None) -> Path:
    """The base ResNet to load. A checkpoint that records its base (``recorded``,
    read from ``source``) gets exactly that file: at its recorded path or at
    ``given`` (``--base``), with the same SHA-256, else one line says what is
    wrong. Without a record: ``given``, or the configuration's default base."""
    if isinstance(recorded, dict) and recorded.get("sha256"):
        path = Path(given) if given else Path(recorded["path"])
        if not path.is_file():
            raise BlockDropError(f"{source} was trained on the base {recorded['path']}, which is missing; "
                                 "put it back, or pass that file with --base")
        if file_sha256(path) != recorded["sha256"]:
            raise BlockDropError(f"{path} is not the base that {source} was trained on ({recorded['path']}, "
                                 f"SHA-256 {recorded['sha256'][:12]}...); pass that file with --base")
        return path
    path = Path(given) if given else find_default_base(config)
    if path is None:
        hub = (f", or put torchvision's weights ({config.torchvision_base}) in "
               f"{Path(torch.hub.get_dir()) / 'checkpoints'}/" if config.torchvision_base else "")
        raise BlockDropError(
            f"no pretrained base ResNet for {config.name} at {PRETRAINED_DIR / config.pretrained}: put it there, "
            f"pass --base PATH, or train one with: python pretrain.py --model {config.name}{hub}"
        )
    return path


def load_base_for(resnet: nn.Module, config, given: str | None = None, recorded: dict | None = None,
                  source: Path | None = None) -> dict:
    """Load the base that ``choose_base`` names into ``resnet``; returns its
    record (path and SHA-256), which checkpoints keep. A base that matched
    ``recorded`` is not hashed again."""
    path = choose_base(config, given, recorded, source)
    load_base(resnet, path, config.name)
    if isinstance(recorded, dict) and recorded.get("sha256"):
        main_print(f"base ResNet: {path} (the one {Path(str(source)).name} was trained on)")
        return {"path": str(path), "sha256": recorded["sha256"]}
    return {"path": str(path), "sha256": file_sha256(path)}


# --------------------------------------------------------------------------
# the ImageNet policy network's start: torchvision's ResNet-18 ImageNet weights
# --------------------------------------------------------------------------
def resnet18_file() -> Path:
    """Where torchvision's weights API keeps the ResNet-18 ImageNet weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(resnet18_weights().url).name


def _resnet18_state(source: bool | Path) -> tuple[dict | None, str]:
    """ResNet-18's ImageNet weights and where they came from, or None and why not."""
    if isinstance(source, Path):
        return load_state_file(source), f"ResNet-18 ImageNet weights from {source}"
    if not resnet18_file().is_file() and not downloads_allowed():
        return None, "downloads are switched off"
    try:
        state = resnet18_weights().get_state_dict(progress=False, check_hash=True, weights_only=True)
        return state, f"torchvision ResNet-18 {resnet18_weights().name} ({resnet18_file()})"
    except (OSError, RuntimeError, pickle.UnpicklingError) as exc:  # no network, bad hash, damaged file
        return None, first_line(exc)


def load_policy_start(agent: PolicyNet, source: bool | Path = True) -> str:
    """Start the ImageNet policy network's stages from the first block of each
    stage of torchvision's ResNet-18 ImageNet weights, as the original does:
    from the file ``source`` or, with ``True``, through torchvision's weights
    API (the torch hub cache, fetched there when absent and downloads are
    allowed). When they cannot be had, one line says so and where to put the
    file, and the agent keeps its random weights. Sets and returns ``agent.start``."""
    state, how = _resnet18_state(source)
    if state is None:
        agent.start = f"random init: torchvision's ResNet-18 ImageNet weights not available ({how})"
        print(f"note: the R101 policy network starts from random weights: torchvision's ResNet-18 "
              f"ImageNet weights are not available ({how}); put {resnet18_file().name} "
              f"(from {resnet18_weights().url}) in {resnet18_file().parent}/ to start as the original does",
              file=sys.stderr)
        return agent.start
    flat, wanted = to_flat_keys(state), agent.features.state_dict()
    missing = [k for k in wanted if k not in flat]
    if missing:
        raise BlockDropError(f"{how}: not torchvision's ResNet-18 weights (no {missing[0]!r})")
    agent.features.load_state_dict({k: flat[k] for k in wanted})
    agent.start = how
    return how
