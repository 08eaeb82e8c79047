"""A run's log: its lines on stdout, TensorBoard scalars under ``cv_dir/log``
and one JSON row per line in ``cv_dir/metrics.jsonl``, each epoch once even
when the run was interrupted and continued."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .files import atomic_write_bytes


class RunLogger:
    """A run that continues at ``first_epoch`` drops what an interrupted run
    logged from that epoch on, so that every epoch is logged once."""

    def __init__(self, cv_dir: Path, first_epoch: int = 0):
        from torch.utils.tensorboard import SummaryWriter  # slow to import: only where training logs

        self.cv_dir = Path(cv_dir)
        self.rows = self.cv_dir / "metrics.jsonl"
        if self.rows.exists():
            kept = [ln for ln in self.rows.read_text().splitlines(keepends=True)
                    if json.loads(ln).get("epoch", -1) < first_epoch]
            atomic_write_bytes(self.rows, "".join(kept).encode())
        log = self.cv_dir / "log"
        self.writer = SummaryWriter(str(log), purge_step=first_epoch if log.exists() else None)

    def log(self, epoch: int, line: str, scalars: dict[str, float], row: dict) -> None:
        """Print ``line``, write ``scalars`` to TensorBoard at ``epoch`` and ``row`` to metrics.jsonl."""
        print(line, flush=True)
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, epoch)
        self.writer.flush()
        with open(self.rows, "a") as fh:
            fh.write(json.dumps({k: _json_number(v) for k, v in row.items()}) + "\n")

    def close(self) -> None:
        self.writer.close()


def _json_number(value):
    return None if isinstance(value, float) and math.isnan(value) else value
