"""A training run's state, in one home: what it saves after every epoch
(networks, optimizer, epoch, random generators, base, arguments), how it is
read back and continued (``--resume``), and the run folder's rules (one run
per folder; ``--restart`` sets an earlier one aside)."""

from __future__ import annotations

import fcntl
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .distributed import main_print
from .errors import BlockDropError
from .files import (
    load_state_file,
    remove_partial_writes,
    same_file_atomically,
    save_checkpoint,
    set_aside,
    writable_folder,
)

LAST = "last.t7"  # the newest complete state of a run, written after every epoch

# --------------------------------------------------------------------------
# the authors' checkpoint names: the one place that knows them
# --------------------------------------------------------------------------
CKPT_PATTERN = re.compile(
    r"ckpt_E_(?P<epoch>\d+)_A_(?P<acc>[0-9.]+)_R_(?P<reward>[-+0-9.E]+)"
    r"_S_(?P<blocks>[0-9.]+)_#_(?P<unique>\d+)\.t7$"
)


def checkpoint_name(epoch: int, acc: float, reward: float, blocks: float, unique: int) -> str:
    """The authors' name: ``ckpt_E_{epoch}_A_{acc}_R_{reward}_S_{blocks}_#_{unique}.t7``."""
    return f"ckpt_E_{epoch}_A_{acc:.3f}_R_{reward:.2E}_S_{blocks:.2f}_#_{unique}.t7"


def parse_checkpoint_name(name: str | Path) -> dict:
    """Inverse of ``checkpoint_name`` (metrics rounded as in the name)."""
    m = CKPT_PATTERN.search(Path(name).name)
    if not m:
        raise ValueError(f"{name} is not named like a BlockDrop checkpoint")
    return {"epoch": int(m["epoch"]), "acc": float(m["acc"]), "reward": float(m["reward"]),
            "blocks": float(m["blocks"]), "unique": int(m["unique"])}


def named_checkpoints(cv_dir: Path, epoch: int | None = None) -> list[Path]:
    """The checkpoints in ``cv_dir`` (of ``epoch`` only, when given), by name."""
    return sorted(Path(cv_dir).glob(f"ckpt_E_{'*' if epoch is None else epoch}_*.t7"))


def epoch_of(path: Path) -> int:
    """The epoch in a checkpoint's name (-1 for another name)."""
    found = re.match(r"ckpt_E_(\d+)_", Path(path).name)
    return int(found[1]) if found else -1


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


def _plain(value) -> bool:
    """A value a weights-only load reads back: a number, string, bool, None, or a list of them."""
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return isinstance(value, (str, int, float, bool, type(None)))


# --------------------------------------------------------------------------
# the state
# --------------------------------------------------------------------------
@dataclass
class RunState:
    """Everything a run needs to go on after its last complete epoch. Saved as a
    dict whose first entries are the authors' (``agent``, ``resnet`` when it
    was trained, ``epoch``, ``reward``, ``acc``), so every BlockDrop checkpoint
    is also a run state."""

    epoch: int  # the last epoch completed
    networks: dict[str, dict]  # "agent" and/or "resnet": state dicts without a ``module.`` prefix
    optimizer: dict
    args: dict  # the run's flags, as args.txt holds them
    rng: list[dict]  # each process's generators, in rank order
    first_epoch: int
    end_epoch: int
    base: dict | None = None  # the base ResNet trained from: path and SHA-256
    metrics: dict = field(default_factory=dict)  # the epoch's metrics (the test's when it was tested)

    def to_dict(self) -> dict:
        return {
            **self.networks, "epoch": self.epoch, **self.metrics, "optimizer": self.optimizer,
            "args": {k: v for k, v in self.args.items() if _plain(v)},
            "rng": self.rng[0], "rng_processes": self.rng if len(self.rng) > 1 else None,
            "base": self.base, "first_epoch": self.first_epoch, "end_epoch": self.end_epoch,
        }

    @classmethod
    def from_dict(cls, obj: object) -> RunState | None:
        """The state a file's contents hold, or None (an authors' checkpoint holds none)."""
        if not (isinstance(obj, dict) and {"rng", "optimizer", "args"} <= obj.keys()
                and isinstance(obj.get("epoch"), int)):
            return None
        networks = {k: obj[k] for k in ("agent", "resnet") if isinstance(obj.get(k), dict)}
        known = {"epoch", "optimizer", "args", "rng", "rng_processes", "base", "first_epoch", "end_epoch", *networks}
        return cls(epoch=obj["epoch"], networks=networks, optimizer=obj["optimizer"], args=obj["args"],
                   rng=obj.get("rng_processes") or [obj["rng"]], first_epoch=obj.get("first_epoch", 0),
                   end_epoch=obj.get("end_epoch", obj["epoch"]), base=obj.get("base"),
                   metrics={k: v for k, v in obj.items() if k not in known})

    def save(self, cv_dir: Path, name: str | None = None) -> Path:
        """``cv_dir/last.t7``, atomically; with ``name``, the state is written
        under that name and ``last.t7`` is the same file."""
        if name is None:
            return save_checkpoint(self.to_dict(), Path(cv_dir) / LAST)
        path = save_checkpoint(self.to_dict(), Path(cv_dir) / name)
        same_file_atomically(path, Path(cv_dir) / LAST)
        return path

    @classmethod
    def newest(cls, cv_dir: Path) -> tuple[Path, RunState]:
        """The newest complete state of the run in ``cv_dir``: ``last.t7`` or, when
        it cannot be read, the checkpoint of the highest epoch that holds a run state."""
        cv_dir = Path(cv_dir)
        ckpts = sorted(named_checkpoints(cv_dir), key=epoch_of, reverse=True)
        for path in [cv_dir / LAST, *ckpts]:
            if not path.is_file():
                continue
            try:
                state = cls.from_dict(load_state_file(path))
            except BlockDropError:
                continue  # not complete: the next one
            if state is not None:
                return path, state
        raise BlockDropError(f"--resume: {cv_dir} holds no run to resume (no {LAST} or checkpoint with a run state)")

    def continued_flags(self, flags: dict, given: frozenset, resumable: frozenset, path: Path) -> dict:
        """The run's own flags, with those of ``resumable`` that were given again
        (``flags``: this invocation's); any other flag given again must agree."""
        for name in sorted(given - resumable - {"resume", "cv_dir"}):
            if name in self.args and flags.get(name) != _as_saved(self.args[name]):
                raise BlockDropError(
                    f"--resume: --{name} {flags.get(name)} contradicts the run's {self.args[name]} ({path}); "
                    f"only {', '.join('--' + n for n in sorted(resumable))} may change when a run is resumed")
        values = {name: _as_saved(self.args[name]) for name in flags if name in self.args and name not in _PLACE}
        values.update({name: flags[name] for name in given & resumable})
        return values

    def check_script(self, script: str, path: Path) -> None:
        """Refuse to resume another script's run in ``script``."""
        saved_by = script_of(self.args)
        if saved_by != script:
            raise BlockDropError(f"--resume: {path} is a run of {saved_by}, not of {script}: resume it with "
                                 f"{saved_by}, or start a new {script} run in another --cv_dir")

    def restore_rng(self, rank: int, world_size: int) -> None:
        """This process's generators, where the run left them (the main process's
        when the number of processes changed)."""
        restore_rng(self.rng[rank] if len(self.rng) == world_size else self.rng[0])


# Where a run is: the folder given on the command line, never the one its state
# recorded (a copied or moved run goes on where it is now).
_PLACE = frozenset({"cv_dir"})


def script_of(args: dict) -> str:
    """The script whose run saved ``args``: pretrain.py counts ``--epochs``, the
    BlockDrop phases ``--max_epochs``, and only finetuning has its starting agent
    and policy flags."""
    if "max_epochs" not in args:
        return "pretrain.py"
    return "finetune.py" if {"pretrained", "per_image", "policy"} & args.keys() else "cl_training.py"


def _as_saved(value):
    return list(value) if isinstance(value, tuple) else value


# --------------------------------------------------------------------------
# the run folder
# --------------------------------------------------------------------------
def run_files(cv_dir: Path) -> list[Path]:
    """The files by which a folder holds a training run."""
    cv_dir = Path(cv_dir)
    return sorted([*named_checkpoints(cv_dir), *cv_dir.glob(LAST), *cv_dir.glob("metrics.jsonl")])


def set_aside_earlier(files: list[Path], folder: Path) -> Path:
    """Move an earlier run's files (and its log/ and args.txt) into ``folder/earlier-<time>/``."""
    return set_aside([*files, Path(folder) / "args.txt", Path(folder) / "log"],
                     Path(folder) / f"earlier-{time.strftime('%Y%m%d-%H%M%S')}")


class FolderLock:
    """One run per folder at a time: an OS lock (``flock``) on ``cv_dir/.run.lock``,
    which the operating system releases when the process ends however it ends
    (a SIGKILL leaves no stale lock). The file names the process that holds it.
    A run that is refused (``release(undo=True)``) leaves the lock file as it
    found it, and removes the folders it made when they are still empty.
    ``earlier``: an earlier run's files that ``begin`` moves once
    every check of the new run has passed (``--restart``)."""

    NAME = ".run.lock"

    def __init__(self, folder: Path, made: list[Path] | None = None):
        self.folder, self.fd, self.made = Path(folder), None, made or []
        self.previous: bytes | None = None  # the lock file's bytes before this run; None: it made the file
        self.earlier: list[Path] = []

    def acquire(self) -> FolderLock:
        path = self.folder / self.NAME
        try:
            self.previous = path.read_bytes()
        except FileNotFoundError:
            self.previous = None
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise BlockDropError(f"--cv_dir {self.folder} is in use by another run (process {holder}): wait for it "
                                 "to end, or choose another --cv_dir") from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def begin(self) -> None:
        """The folder made ready for the run's first write, once every check has
        passed: a killed write's temporary files removed, and the earlier run's
        files (``--restart``) moved to ``earlier-<time>/``."""
        for tmp in remove_partial_writes(self.folder):
            main_print(f"note: removed {tmp}, left by an interrupted write")
        if self.earlier:
            main_print(f"note: the earlier run's files were moved to {set_aside_earlier(self.earlier, self.folder)}/")
            self.earlier = []

    def release(self, undo: bool = False) -> None:
        """The lock released; with ``undo`` (a refused run), the lock file and the
        folders as they were before (the file is put back while still held)."""
        if self.fd is None:
            return
        if undo:
            if self.previous is None:
                (self.folder / self.NAME).unlink(missing_ok=True)
            else:
                os.ftruncate(self.fd, 0)
                os.pwrite(self.fd, self.previous, 0)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None
        for folder in reversed(self.made if undo else []):
            try:
                folder.rmdir()
            except OSError:
                break  # not empty: the run wrote there

    def exit(self, exc_type, exc, tb) -> None:
        """For ``ExitStack.push``: released, and undone when the run ended in an exception."""
        self.release(undo=exc_type is not None)


def missing_folders(path: Path) -> list[Path]:
    """The folders of ``path`` (itself included) that do not exist, outermost first."""
    path = Path(path)
    return [p for p in reversed([path, *path.parents]) if not p.exists()]


def prepare_run_folder(cv_dir: Path, resume: bool, restart: bool, continuing: bool = False,
                       files: list[Path] | None = None) -> FolderLock:
    """``--cv_dir`` checked and held for this run (``FolderLock``, which the
    caller releases), and a new run refused where another one is, unless it
    continues it (``--resume``, or ``continuing``: the original's ``--load`` of
    one of its checkpoints) or ``--restart`` (the earlier run's files are then
    in the lock's ``earlier``, which ``FolderLock.begin`` sets aside once the new
    run's checks have passed). ``files``: the run's files when
    they are more than ``run_files`` finds (a base that pretrain.py wrote)."""
    if resume and not Path(cv_dir).is_dir():
        raise BlockDropError(f"--resume: {cv_dir} holds no run to resume (there is no such folder)")
    made = missing_folders(Path(cv_dir))
    cv_dir = writable_folder(Path(cv_dir), "--cv_dir")
    lock = FolderLock(cv_dir, made).acquire()
    try:
        lock.earlier = _earlier_run(cv_dir, resume, restart, continuing, files)
    except BaseException:
        lock.release(undo=True)
        raise
    return lock


def _earlier_run(cv_dir: Path, resume: bool, restart: bool, continuing: bool, files: list[Path] | None):
    """The earlier run's files that ``--restart`` sets aside; a refusal without it."""
    earlier = run_files(cv_dir) + (files or [])
    if not earlier or resume or continuing:
        return []
    if not restart:
        raise BlockDropError(
            f"--cv_dir {cv_dir} holds another run ({earlier[0].name}): continue it with --resume, start "
            f"a new one there with --restart (the earlier files are moved to {cv_dir}/earlier-<time>/), "
            "or choose another --cv_dir")
    return earlier
