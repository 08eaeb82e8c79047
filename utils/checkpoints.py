"""Checkpoints and the run folder: the authors' file names, atomic writes, safe
loading (``weights_only=True``) of BlockDrop checkpoints and pretrained bases,
the default base of a configuration, and the ImageNet policy network's start."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from models import RESNET18_WEIGHTS, BlockDrop, PolicyNet, build_agent, build_resnet, get_config, to_flat_keys

from .cli import BlockDropError, downloads_allowed
from .distributed import main_print

# --------------------------------------------------------------------------
# names
# --------------------------------------------------------------------------
CKPT_PATTERN = re.compile(
    r"ckpt_E_(?P<epoch>\d+)_A_(?P<acc>[0-9.]+)_R_(?P<reward>[-+0-9.E]+)"
    r"_S_(?P<blocks>[0-9.]+)_#_(?P<unique>\d+)\.t7$"
)
BASE_PATTERN = re.compile(r"pk_E_(?P<epoch>\d+)_A_(?P<acc>[0-9.]+)\.t7$")


def checkpoint_name(epoch: int, acc: float, reward: float, blocks: float, unique: int) -> str:
    """The authors' name: ``ckpt_E_{epoch}_A_{acc}_R_{reward}_S_{blocks}_#_{unique}.t7``."""
    return f"ckpt_E_{epoch}_A_{acc:.3f}_R_{reward:.2E}_S_{blocks:.2f}_#_{unique}.t7"


def parse_checkpoint_name(name: str | Path) -> dict:
    """Inverse of ``checkpoint_name`` (figures rounded as in the name)."""
    m = CKPT_PATTERN.search(Path(name).name)
    if not m:
        raise ValueError(f"{name} is not named like a BlockDrop checkpoint")
    return {"epoch": int(m["epoch"]), "acc": float(m["acc"]), "reward": float(m["reward"]),
            "blocks": float(m["blocks"]), "unique": int(m["unique"])}


def base_checkpoint_name(epoch: int, acc: float) -> str:
    return f"pk_E_{epoch}_A_{acc:.3f}.t7"


def parse_base_checkpoint_name(name: str | Path) -> dict:
    m = BASE_PATTERN.search(Path(name).name)
    if not m:
        raise ValueError(f"{name} is not named like a pretrained base")
    return {"epoch": int(m["epoch"]), "acc": float(m["acc"])}


def converted_path(path: Path) -> Path:
    """Where ``convert_base.py`` writes the plain state dict of a pickled base."""
    return Path(path).with_name(Path(path).name + ".weights.t7")


# --------------------------------------------------------------------------
# writing: a temporary file beside the target, then os.replace
# --------------------------------------------------------------------------
_UMASK = os.umask(0)  # read once, at import, before any thread (TensorBoard's writer) runs
os.umask(_UMASK)


def _write_atomically(path: Path, write: Callable[[str], None]) -> Path:
    """``write`` a temporary file beside ``path``, then ``os.replace`` it into place:
    a killed job never leaves a half-written file under the real name. The file
    gets the permissions an ordinary ``open`` would give it (mkstemp's are 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    return _write_atomically(path, lambda tmp: Path(tmp).write_bytes(data))


def save_checkpoint(obj: dict, path: Path) -> Path:
    """``torch.save``, atomically (see ``_write_atomically``)."""
    return _write_atomically(path, lambda tmp: torch.save(obj, tmp))


def same_file_atomically(source: Path, path: Path) -> Path:
    """``path`` holds the same bytes as ``source`` (a hard link: no second write of
    a large checkpoint; a copy where links are not possible), put in place atomically."""
    def link(tmp: str) -> None:
        Path(tmp).unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)

    return _write_atomically(path, link)


def write_json(path: Path, obj: dict) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2) + "\n").encode())


def save_args(args: dict, cv_dir: Path) -> None:
    """The run's arguments, one ``name: value`` per line, in ``cv_dir/args.txt``."""
    text = "".join(f"{k}: {v}\n" for k, v in sorted(args.items()) if not k.startswith("_"))
    atomic_write_bytes(Path(cv_dir) / "args.txt", text.encode())


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside nn.DataParallel or DistributedDataParallel: checkpoints hold no ``module.`` prefix."""
    return model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model


def checkpoint_dict(epoch: int, stats: dict, agent: nn.Module, resnet: nn.Module | None,
                    optimizer: torch.optim.Optimizer, args: dict, run: dict) -> dict:
    """What a BlockDrop checkpoint holds: the authors' entries (``agent``,
    ``resnet`` when it was trained, ``epoch``, ``reward``, ``acc``), the figures,
    the run's arguments, and what resuming needs (``optimizer``, the RNG states,
    and ``run``: the base, the run's first and last epoch)."""
    obj = {
        "agent": unwrap(agent).state_dict(),
        "epoch": epoch,
        "reward": stats["reward"],
        "acc": stats["acc"],
        "blocks": stats["blocks"],
        "blocks_std": stats["blocks_std"],
        "unique": stats["unique"],
        "optimizer": optimizer.state_dict(),
        "args": {k: v for k, v in args.items() if isinstance(v, (str, int, float, bool, type(None)))},
        "rng": rng_state(),
        **run,
    }
    if resnet is not None:
        obj["resnet"] = unwrap(resnet).state_dict()
    return obj


LAST = "last.t7"  # the newest complete state of a run, written after every epoch


def save_blockdrop_checkpoint(cv_dir: Path, obj: dict) -> Path:
    """``ckpt_E_{epoch}_A_{acc}_R_{reward}_S_{blocks}_#_{unique}.t7`` in ``cv_dir``."""
    name = checkpoint_name(obj["epoch"], obj["acc"], obj["reward"], obj["blocks"], obj["unique"])
    return save_checkpoint(obj, Path(cv_dir) / name)


# --------------------------------------------------------------------------
# the random number generators, as tensors (weights_only loading admits no numpy arrays)
# --------------------------------------------------------------------------
def rng_state() -> dict:
    """The states of torch's (CPU and CUDA), numpy's and Python's generators."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "random": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    r = state["random"]
    random.setstate((r["version"], tuple(int(v) for v in r["internal"].tolist()), r["gauss_next"]))


# --------------------------------------------------------------------------
# the run folder
# --------------------------------------------------------------------------
def writable_folder(path: Path, flag: str, create: bool = True) -> Path:
    """``path`` as a folder that can be written (made when ``create``; else only
    checked: it or the nearest folder above it that exists must be writable),
    or one BlockDropError."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BlockDropError(f"{flag} {path}: is a file, not a folder")
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BlockDropError(f"{flag} {path}: cannot be created ({exc.strerror})") from exc
    existing = next(p for p in [path, *path.absolute().parents] if p.exists())
    if not existing.is_dir():
        raise BlockDropError(f"{flag} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BlockDropError(f"{flag} {path}: {existing} is not writable")
    return path


def writable_file(path: Path, flag: str) -> Path:
    """``path`` as a file that can be written, checked before any work, or one BlockDropError."""
    path = Path(path)
    if path.is_dir():
        raise BlockDropError(f"{flag} {path}: is a folder; give a file name")
    writable_folder(path.parent, flag, create=False)
    if path.exists() and not os.access(path, os.W_OK):
        raise BlockDropError(f"{flag} {path}: is not writable")
    return path


def remove_partial_writes(folder: Path) -> list[Path]:
    """Delete the temporary files that a write killed half-way left behind."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink()
            removed.append(tmp)
    return removed


def run_files(cv_dir: Path) -> list[Path]:
    """The files by which a folder holds a training run."""
    cv_dir = Path(cv_dir)
    return sorted([*cv_dir.glob("ckpt_E_*.t7"), *cv_dir.glob(LAST), *cv_dir.glob("metrics.jsonl")])


def newest_run_state(cv_dir: Path) -> tuple[Path, dict]:
    """The newest complete state of the run in ``cv_dir``: ``last.t7`` or, when
    it cannot be read, the checkpoint of the highest epoch that holds a run state."""
    cv_dir = Path(cv_dir)
    ckpts = sorted(cv_dir.glob("ckpt_E_*.t7"), key=lambda p: -parse_checkpoint_name(p)["epoch"])
    for path in [cv_dir / LAST, *ckpts]:
        if not path.is_file():
            continue
        try:
            obj = load_state_file(path)
        except BlockDropError:
            continue  # not complete: the next one
        if isinstance(obj, dict) and {"rng", "optimizer", "args"} <= obj.keys() and isinstance(obj.get("epoch"), int):
            return path, obj
    raise BlockDropError(f"--resume: {cv_dir} holds no run to resume (no {LAST} or checkpoint with a run state)")


def set_aside(files: list[Path], folder: Path) -> Path:
    """Move an earlier run's files (and its log/ and args.txt) into ``folder/earlier-<time>/``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kept = Path(folder) / f"earlier-{stamp}"
    n = 1
    while kept.exists():
        n += 1
        kept = Path(folder) / f"earlier-{stamp}-{n}"
    kept.mkdir()
    for path in [*files, Path(folder) / "args.txt", Path(folder) / "log"]:
        if path.exists():
            path.rename(kept / path.name)
    return kept


# --------------------------------------------------------------------------
# reading: weights only, every failure one line naming the file
# --------------------------------------------------------------------------
def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def load_state_file(path: Path) -> object:
    """``torch.load`` with ``weights_only=True`` onto the CPU (files saved on a
    GPU and files in the legacy non-zip format both load). Any failure to read
    is one BlockDropError naming the file and the cause."""
    path = Path(path)
    if not path.exists():
        raise BlockDropError(f"{path}: no such file")
    if not path.is_file():
        raise BlockDropError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise BlockDropError(f"{path}: the file is empty")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            raise BlockDropError(
                f"{path}: holds pickled Python objects (for example a whole nn.Module), which a safe load "
                f"refuses because unpickling them can run code; if you trust this file, convert it once with "
                f"'python convert_base.py {path}' (it writes {converted_path(path).name}, a plain state dict, "
                "beside it) and use that"
            ) from exc
        raise BlockDropError(f"{path}: {_unreadable(path)}") from exc
    except Exception as exc:  # a damaged file fails anywhere in torch's reader; the cause stays chained
        raise BlockDropError(f"{path}: {_unreadable(path)}") from exc


def _unreadable(path: Path) -> str:
    """What a file that torch cannot read looks like, in words."""
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head.startswith(b"PK\x03\x04"):
        return "a truncated or damaged PyTorch checkpoint (its zip archive cannot be read)"
    if head.startswith(b"\x80"):
        return "a truncated or damaged PyTorch checkpoint (legacy format)"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "not a PyTorch checkpoint (an unknown binary format)"
    return "a text file, not a PyTorch checkpoint"


def _unwrap_state(obj: object, path: Path, keys: Iterable[str]) -> dict:
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
        raise BlockDropError(f"{path}: the {what} does not fit: {lines[0] if lines else _first_line(exc)}") from exc
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    parts = [f"missing {len(missing)} key(s) such as {missing[0]!r}"] if missing else []
    if result.unexpected_keys:
        parts.append(f"{len(result.unexpected_keys)} unexpected key(s) such as {result.unexpected_keys[0]!r}")
    if parts:
        raise BlockDropError(f"{path}: the {what} does not fit: {'; '.join(parts)}")


def load_base(resnet: nn.Module, path: Path, model_name: str) -> dict:
    """A pretrained base ResNet in the standard layout (``state_dict`` wrapper,
    a plain state dict or torchvision's ResNet keys, ``module.`` prefixes)."""
    obj = load_state_file(path)
    state = _unwrap_state(obj, path, ("state_dict", "model", "resnet", "net"))
    load_weights(resnet, state, path, f"{model_name} base ResNet")
    return obj if isinstance(obj, dict) else {}


def load_blockdrop_checkpoint(path: Path, model_name: str, agent: nn.Module,
                              resnet: nn.Module | None = None, obj: dict | None = None) -> dict:
    """A BlockDrop checkpoint: the agent under ``agent`` (or the legacy ``net``),
    and the ResNet under ``resnet`` when finetuned. Returns the file's dict and
    sets ``has_resnet`` in it. ``obj``: the file's contents when already read."""
    obj = load_state_file(path) if obj is None else obj
    if not isinstance(obj, dict):
        raise BlockDropError(f"{path}: not a BlockDrop checkpoint (expected a dict with an 'agent' entry)")
    agent_state = obj.get("agent", obj.get("net"))
    if not isinstance(agent_state, dict):
        raise BlockDropError(f"{path}: holds no 'agent' (or legacy 'net') entry; not a BlockDrop checkpoint")
    logit = agent_state.get("logit.weight", agent_state.get("module.logit.weight"))
    if isinstance(logit, torch.Tensor) and logit.shape[0] != agent.num_blocks:
        raise BlockDropError(
            f"{path}: its agent decides {logit.shape[0]} blocks but {model_name} has {agent.num_blocks}; "
            "pass the --model it was trained for"
        )
    load_weights(agent, agent_state, path, f"{model_name} agent")
    has_resnet = isinstance(obj.get("resnet"), dict)
    if has_resnet and resnet is not None:
        load_weights(resnet, obj["resnet"], path, f"{model_name} ResNet")
    return {**obj, "has_resnet": has_resnet}


# --------------------------------------------------------------------------
# the default base of a configuration (cv/pretrained/, relative to the working directory)
# --------------------------------------------------------------------------
PRETRAINED_DIR = Path("cv/pretrained")


def find_default_base(cfg) -> Path | None:
    """The configuration's default base (SPEC section 1), its plain state dict
    written by ``convert_base.py`` when there is one, or, when that file is
    absent, the newest ``pk_E_<epoch>_A_<acc>.t7`` that ``pretrain.py`` wrote
    in the same folder (the highest epoch, then the highest accuracy), or, for
    ResNet-101, torchvision's ImageNet weights in the torch hub cache."""
    path = PRETRAINED_DIR / cfg.pretrained
    if converted_path(path).is_file():  # the default file was a pickle, converted by convert_base.py
        return converted_path(path)
    if path.is_file():
        return path
    candidates = []
    if path.parent.is_dir():
        for f in path.parent.glob("pk_E_*_A_*.t7"):
            try:
                fig = parse_base_checkpoint_name(f)
            except ValueError:
                continue
            candidates.append((fig["epoch"], fig["acc"], f))
    if candidates:
        return max(candidates)[2]
    if cfg.torchvision_base:
        hub = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.torchvision_base).name
        if hub.is_file():
            return hub
    return None


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def base_record(path: Path) -> dict:
    """What a checkpoint records of the base it was trained on."""
    return {"path": str(path), "sha256": file_sha256(path)}


def resolve_base(cfg, base: str | None, recorded: dict | None = None, source: Path | None = None) -> Path:
    """The base ResNet to load. A checkpoint that records its base (``recorded``,
    read from ``source``) gets exactly that file: at its recorded path or at
    ``--base``, with the same SHA-256, else one line says what is wrong. Without
    a record: ``--base``, or the configuration's default base under ``cv/pretrained/``."""
    if isinstance(recorded, dict) and recorded.get("sha256"):
        path = Path(base) if base else Path(recorded["path"])
        if not path.is_file():
            raise BlockDropError(f"{source} was trained on the base {recorded['path']}, which is missing; "
                                 "put it back, or pass that file with --base")
        if file_sha256(path) != recorded["sha256"]:
            raise BlockDropError(f"{path} is not the base that {source} was trained on ({recorded['path']}, "
                                 f"SHA-256 {recorded['sha256'][:12]}...); pass that file with --base")
        return path
    path = Path(base) if base else find_default_base(cfg)
    if path is None:
        hub = (f", or put torchvision's weights ({cfg.torchvision_base}) in {Path(torch.hub.get_dir()) / 'checkpoints'}/"
               if cfg.torchvision_base else "")
        raise BlockDropError(
            f"no pretrained base ResNet for {cfg.name} at {PRETRAINED_DIR / cfg.pretrained}: put it there, "
            f"pass --base PATH, or train one with: python pretrain.py --model {cfg.name}{hub}"
        )
    return path


def load_default_or_given_base(resnet: nn.Module, cfg, base: str | None, recorded: dict | None = None,
                               source: Path | None = None) -> Path:
    """Load the base that ``resolve_base`` names into ``resnet``; say so when a
    checkpoint's record chose it."""
    path = resolve_base(cfg, base, recorded, source)
    load_base(resnet, path, cfg.name)
    if isinstance(recorded, dict) and recorded.get("sha256"):
        main_print(f"base ResNet: {path} (the one {Path(str(source)).name} was trained on)")
    return path


def load_base_on_record(resnet: nn.Module, cfg, base: str | None, recorded: dict | None = None,
                        source: Path | None = None) -> dict:
    """``load_default_or_given_base``, returning the record of the base loaded
    (path and SHA-256); a base that matched ``recorded`` is not hashed again."""
    path = load_default_or_given_base(resnet, cfg, base, recorded, source)
    if isinstance(recorded, dict) and recorded.get("sha256"):
        return {"path": str(path), "sha256": recorded["sha256"]}
    return base_record(path)


def load_blockdrop(path: str | Path, model: str, base: str | Path | None = None,
                   device: str | torch.device = "cpu") -> BlockDrop:
    """A trained BlockDrop model, ready to predict: ``model(images)`` gives the
    logits and the greedy policy of each image, running only the blocks each
    image keeps, in batches. ``path`` is a BlockDrop checkpoint of the
    configuration ``model``; when it holds no ResNet (a curriculum checkpoint)
    its base is the one it records, else ``base`` or the configuration's default."""
    cfg = get_config(model)
    agent, resnet = build_agent(cfg), build_resnet(cfg)
    ckpt = load_blockdrop_checkpoint(Path(path), cfg.name, agent, resnet)
    if not ckpt["has_resnet"]:
        load_default_or_given_base(resnet, cfg, str(base) if base else None, ckpt.get("base"), Path(path))
    return BlockDrop(agent, resnet).to(device).eval()


# --------------------------------------------------------------------------
# the ImageNet policy network's start: torchvision's ResNet-18 ImageNet weights
# --------------------------------------------------------------------------
def resnet18_file() -> Path:
    """Where torchvision's weights API keeps the ResNet-18 ImageNet weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(RESNET18_WEIGHTS.url).name


def load_policy_start(agent: PolicyNet, source: bool | Path = True) -> str:
    """Start the ImageNet policy network's stages from the first block of each
    stage of torchvision's ResNet-18 ImageNet weights, as the original does:
    from the file ``source`` or, with ``True``, through torchvision's weights
    API (the torch hub cache, fetched there when absent and downloads are
    allowed). When they cannot be had, one line says so and where to put the
    file, and the agent keeps its random weights. Sets and returns ``agent.start``."""
    if isinstance(source, Path):
        state, how = load_state_file(source), f"ResNet-18 ImageNet weights from {source}"
    elif not resnet18_file().is_file() and not downloads_allowed():
        state, how = None, "downloads are switched off"
    else:
        try:
            state = RESNET18_WEIGHTS.get_state_dict(progress=False, check_hash=True, weights_only=True)
            how = f"torchvision ResNet-18 {RESNET18_WEIGHTS.name} ({resnet18_file()})"
        except (OSError, RuntimeError, pickle.UnpicklingError) as exc:  # no network, bad hash, damaged file
            state, how = None, _first_line(exc)
    if state is None:
        agent.start = f"random init: torchvision's ResNet-18 ImageNet weights not available ({how})"
        print(f"note: the R101 policy network starts from random weights: torchvision's ResNet-18 "
              f"ImageNet weights are not available ({how}); put {resnet18_file().name} "
              f"(from {RESNET18_WEIGHTS.url}) in {resnet18_file().parent}/ to start as the original does",
              file=sys.stderr)
        return agent.start
    flat, wanted = to_flat_keys(state), agent.features.state_dict()
    missing = [k for k in wanted if k not in flat]
    if missing:
        raise BlockDropError(f"{how}: not torchvision's ResNet-18 weights (no {missing[0]!r})")
    agent.features.load_state_dict({k: flat[k] for k in wanted})
    agent.start = how
    return how
