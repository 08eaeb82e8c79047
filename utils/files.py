"""Files that are never half-written and never run code: atomic writes (a
temporary file beside the target, then ``os.replace``), the checks of output
paths made before any work, and the one safe way to read a ``.t7`` file
(``torch.load(..., weights_only=True)``), whose every failure is one line; and
whether a missing file may be downloaded (``BLOCKDROP_NO_DOWNLOAD``)."""

from __future__ import annotations

import json
import os
import pickle
import resource
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from .errors import BlockDropError

NO_DOWNLOAD_ENV = "BLOCKDROP_NO_DOWNLOAD"  # set to 1 to never try the network


def downloads_allowed() -> bool:
    """Whether a missing file (a data set, torchvision's weights) may be fetched from the network."""
    return os.environ.get(NO_DOWNLOAD_ENV, "") not in ("1", "true", "yes")


_UMASK = os.umask(0)  # read once, at import, before any thread (TensorBoard's writer) runs
os.umask(_UMASK)


# --------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------
def write_atomically(path: Path, write: Callable[[str], None]) -> Path:
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
    return write_atomically(path, lambda tmp: Path(tmp).write_bytes(data))


def save_checkpoint(obj: dict, path: Path) -> Path:
    """``torch.save``, atomically. A write that fails (a full disk, a file-size
    limit) is one BlockDropError naming the file and the cause; the file of that
    name, if there was one, is unchanged."""
    def write(tmp: str) -> None:
        try:
            torch.save(obj, tmp)
        except RuntimeError as exc:  # torch's writer reports a failed write as a RuntimeError
            raise BlockDropError(f"{path}: cannot be written: {_write_failure(Path(tmp), exc)}; "
                                 f"{'the earlier file is unchanged' if Path(path).exists() else 'nothing was written'}"
                                 ) from exc

    return write_atomically(path, write)


def _write_failure(path: Path, exc: BaseException) -> str:
    """Why a write failed, in words: a full disk, a file-size limit, or the writer's own words."""
    free = shutil.disk_usage(path.parent).free
    if free < 1 << 20:
        return f"no space left on the device ({free:,} bytes free)"
    limit, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if limit != resource.RLIM_INFINITY and path.exists() and path.stat().st_size >= limit - (1 << 16):
        return f"the file-size limit (ulimit -f: {limit:,} bytes) is reached"
    return first_line(exc)


def same_file_atomically(source: Path, path: Path) -> Path:
    """``path`` holds the same bytes as ``source`` (a hard link: no second write of
    a large checkpoint; a copy where links are not possible), put in place atomically."""
    def link(tmp: str) -> None:
        Path(tmp).unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)

    return write_atomically(path, link)


def write_json(path: Path, obj: dict) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2) + "\n").encode())


def save_args(args: dict, cv_dir: Path) -> None:
    """The run's arguments, one ``name: value`` per line, in ``cv_dir/args.txt``."""
    text = "".join(f"{k}: {v}\n" for k, v in sorted(args.items()) if not k.startswith("_"))
    atomic_write_bytes(Path(cv_dir) / "args.txt", text.encode())


def set_aside(paths: list[Path], folder: Path) -> Path:
    """Move ``paths`` (those that exist) into the new folder ``folder``, or
    ``folder-2``, ``folder-3``, ... when it is taken: an earlier run's files,
    kept whole. Returns the folder."""
    kept, n = Path(folder), 1
    while kept.exists():
        n += 1
        kept = Path(folder).with_name(f"{Path(folder).name}-{n}")
    kept.mkdir()
    for path in paths:
        if path.exists():
            path.rename(kept / path.name)
    return kept


def remove_partial_writes(folder: Path) -> list[Path]:
    """Delete the temporary files that a write killed half-way left behind."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink()
            removed.append(tmp)
    return removed


# --------------------------------------------------------------------------
# output paths, checked before any work
# --------------------------------------------------------------------------
def writable_folder(path: Path, flag: str, create: bool = True) -> Path:
    """``path`` as a folder that can be written (made when ``create``; else only
    checked: it or the nearest folder above it that exists must be writable),
    or one BlockDropError."""
    path = Path(path)
    utf8_name(path, flag)
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


def utf8_name(path: Path, flag: str) -> None:
    """Refuse an output path whose name is not valid UTF-8: the files written
    there record their paths, and the TensorBoard writer needs UTF-8 names."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError as exc:
        shown = os.fsencode(str(path)).decode("utf-8", "backslashreplace")
        raise BlockDropError(f"{flag} {shown}: the name is not valid UTF-8; choose a name that is") from exc


def writable_file(path: Path, flag: str) -> Path:
    """``path`` as a file that can be written, checked before any work, or one BlockDropError."""
    path = Path(path)
    utf8_name(path, flag)
    if path.is_dir():
        raise BlockDropError(f"{flag} {path}: is a folder; give a file name")
    writable_folder(path.parent, flag, create=False)
    if path.exists() and not os.access(path, os.W_OK):
        raise BlockDropError(f"{flag} {path}: is not writable")
    return path


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_LARGEST_JSON = 64 << 20  # a report this project writes is far smaller


def _holds_json(path: Path) -> bool:
    if path.stat().st_size > _LARGEST_JSON:
        return False
    try:
        json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False
    return True


def _holds_png(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE


_OF_KIND = {"JSON": _holds_json, "PNG": _holds_png}


def _what_is(path: Path) -> str:
    return {"zip": "a PyTorch checkpoint or another zip archive", "pickle": "a pickle, such as a legacy PyTorch "
            "checkpoint", "png": "a PNG image", "text": "a text file", "binary": "a binary file"}[_format_of(path)]


def output_file(path: Path, flag: str, kind: str) -> Path:
    """``writable_file``, and a file already there replaced only when it is of
    the ``kind`` written ("JSON", "PNG") or empty: an output flag never replaces
    a checkpoint, nor any other file."""
    path = writable_file(path, flag)
    if path.is_file() and path.stat().st_size and not _OF_KIND[kind](path):
        raise BlockDropError(f"{flag} {path}: the file there is {_what_is(path)}, not a {kind} file, and would "
                             f"be replaced; give a new {kind} file name")
    return path


# --------------------------------------------------------------------------
# reading: weights only, every failure one line naming the file
# --------------------------------------------------------------------------
def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def converted_path(path: Path) -> Path:
    """Where ``convert_base.py`` writes the plain state dict of a pickled file."""
    return Path(path).with_name(Path(path).name + ".weights.t7")


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
        with warnings.catch_warnings():  # a refused pickle's warning would come before the one line
            warnings.simplefilter("ignore")
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


def _format_of(path: Path) -> str:
    """What a file holds, from its first bytes: zip, pickle, png, text or binary."""
    with open(path, "rb") as fh:
        head = fh.read(4096)
    for prefix, name in ((b"PK\x03\x04", "zip"), (b"\x80", "pickle"), (PNG_SIGNATURE, "png")):
        if head.startswith(prefix):
            return name
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "binary"
    return "text"


def _unreadable(path: Path) -> str:
    """What a file that torch cannot read looks like, in words."""
    return {"zip": "a truncated or damaged PyTorch checkpoint (its zip archive cannot be read)",
            "pickle": "a truncated or damaged PyTorch checkpoint (legacy format)",
            "binary": "not a PyTorch checkpoint (an unknown binary format)",
            "png": "not a PyTorch checkpoint (an unknown binary format)"}.get(
        _format_of(path), "a text file, not a PyTorch checkpoint")
