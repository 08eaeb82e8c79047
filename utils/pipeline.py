"""What the pipeline scripts (``sweep.py``, ``demo.py``, ``reproduce.py``) share:
running another script as the command that reproduces it, and keeping a
result with the settings that made it, so that a run that stopped resumes
where it was.

A script runs another only through ``run_script("finetune.py", argv)``: the
other's flags, checks and ``main``, exactly as on the command line.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from utils.bases import file_sha256
from utils.distributed import from_main, is_main_process, main_print
from utils.errors import BlockDropError
from utils.files import write_json
from utils.runstate import RunState, run_files

ROOT = Path(__file__).resolve().parents[1]  # the project's folder, where the scripts are


def load_script(script: str):
    """One of the project's top-level scripts as a module, by file (``"test.py"``
    or ``"test"``): ``test.py`` would otherwise lose to the standard library's
    ``test`` package."""
    name = script.removesuffix(".py")
    module_name = f"blockdrop_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def run_script(script: str, argv: Sequence[object]):
    """Print ``$ python <script> <argv>``, then run that script's ``main`` on
    ``argv`` in this process and return what it returns."""
    argv = [str(a) for a in argv]
    main_print(f"\n$ python {script} {' '.join(argv)}")
    module = load_script(script)
    return module.main(module.get_args_parser().parse_args(argv))


def content_sha256(path: str | Path | None) -> str | None:
    """The SHA-256 of a file a step starts from (None for no file): the file's
    content, not its name, decides whether a stored result still holds."""
    if not path:
        return None
    if not Path(path).is_file():
        raise BlockDropError(f"{path}: no such file")
    return file_sha256(path)


def cached(record: Path, settings: dict, compute: Callable[[], dict]) -> dict:
    """The report stored in ``record`` when it was made with the same ``settings``;
    otherwise (a record that is missing, empty or damaged included) ``compute()``,
    stored with them."""
    done = _read(record)
    if done.get("settings") != settings or "report" not in done:
        started = time.perf_counter()
        done = {"settings": settings, "report": compute()}
        if is_main_process():  # under torchrun every process computes it alike; one writes
            write_json(record, {**done, "seconds": time.perf_counter() - started})
    return done["report"]


def run_training(folder: Path, script: str, argv: Sequence[object], settings: dict) -> dict:
    """A training script run once in its ``--cv_dir`` ``folder``: its stored
    result when it finished there with the same ``settings``; continued with
    ``--resume`` when a run of these settings was interrupted there after a
    saved state; otherwise run afresh (``--restart`` sets an earlier run
    aside). Returns the script's result (a base's ``path`` for pretrain.py)."""
    folder = Path(folder)
    record, started = folder / "step.json", folder / "started.json"
    done, argv = from_main(_decide(record, started, folder, [str(a) for a in argv], settings))
    if done is not None:
        return done
    if is_main_process():
        write_json(started, {"settings": settings})
    began = time.perf_counter()
    result = run_script(script, argv)
    result = {"path": str(result)} if isinstance(result, Path) else result
    result = from_main(result)  # under torchrun: the main process's (it alone saves), once it has saved
    if is_main_process():
        write_json(record, {"settings": settings, "result": result, "seconds": time.perf_counter() - began})
    return result


def _decide(record: Path, started: Path, folder: Path, argv: list[str], settings: dict) -> tuple:
    """(the stored result, None) for a finished step, else (None, the argv to run it with)."""
    done = _read(record)
    if done.get("settings") == settings and "result" in done:
        return done["result"], None
    if run_files(folder):
        argv.append("--resume" if _read(started).get("settings") == settings and _has_state(folder) else "--restart")
    return None, argv


def recorded_seconds(folder: Path) -> float:
    """The time the steps recorded under ``folder`` took when they ran (a resumed
    step: its last part), whether or not they ran in this invocation."""
    total = 0.0
    for path in Path(folder).rglob("*.json"):
        try:
            seconds = json.loads(path.read_text()).get("seconds", 0.0)
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            continue
        total += seconds if isinstance(seconds, (int, float)) else 0.0
    return total


def _read(path: Path) -> dict:
    """A step's record, or {} when there is none that can be read (a write cut
    short, a damaged file): the step is then run again."""
    try:
        done = json.loads(Path(path).read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return {}
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        main_print(f"note: {path} cannot be read as a step's record: the step runs again")
        return {}
    return done if isinstance(done, dict) else {}


def _has_state(folder: Path) -> bool:
    try:
        RunState.newest(folder)
    except BlockDropError:
        return False
    return True
