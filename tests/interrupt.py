"""Runs one of the project's scripts and freezes it at a chosen moment, so that
a test can kill it there with SIGKILL:

    python tests/interrupt.py MARKER step:EPOCH:BATCH SCRIPT [flags...]
    python tests/interrupt.py MARKER write:N SCRIPT [flags...]

``step``: before training batch BATCH of epoch EPOCH; ``write``: half-way
through the N-th file the script saves (half of its bytes on disk). At that
moment MARKER is created and the process sleeps until it is killed.
"""

from __future__ import annotations

import io
import runpy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import engine  # noqa: E402


def freeze(marker: Path) -> None:
    marker.write_text("frozen")
    time.sleep(600)


def main() -> None:
    marker, moment, script, *flags = sys.argv[1:]
    marker = Path(marker)
    kind, *where = moment.split(":")
    if kind == "step":
        epoch, batch = map(int, where)
        real_epoch = engine.train_one_epoch

        def one_epoch(step, *args, desc: str = "", **kwargs):
            seen = {"batch": 0}

            def frozen_step(*step_args):
                if (int(desc.split()[-1]), seen["batch"]) == (epoch, batch):
                    freeze(marker)
                seen["batch"] += 1
                return step(*step_args)

            return real_epoch(frozen_step, *args, desc=desc, **kwargs)

        engine.train_one_epoch = one_epoch
    elif kind == "write":
        target, real_save = int(where[0]), torch.save
        count = {"saves": 0}

        def save(obj, f, *args, **kwargs):
            count["saves"] += 1
            if count["saves"] == target:
                buffer = io.BytesIO()
                real_save(obj, buffer)
                Path(f).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                freeze(marker)
            return real_save(obj, f, *args, **kwargs)

        torch.save = save
    sys.argv = [script, *flags]
    runpy.run_path(str(ROOT / script), run_name="__main__")


if __name__ == "__main__":
    main()
