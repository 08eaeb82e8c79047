"""Runs one of the project's training scripts in a process that torchrun
started, then saves this process's networks and the policies it sampled at each step
as OUT/rank<RANK>.t7, so that a test can compare the processes:

    torchrun --nproc_per_node 2 tests/distributed_run.py OUT SCRIPT [flags...]
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import training  # noqa: E402


def main() -> None:
    out, script, *flags = sys.argv[1:]
    built, policies = {}, []
    real_build, real_step = training.build_networks, training.train_step

    def build_networks(*args, **kwargs):
        built["nets"] = real_build(*args, **kwargs)
        return built["nets"]

    def train_step(*args, **kwargs):
        out = real_step(*args, **kwargs)
        policies.append(out["policy"].cpu())
        return out

    training.build_networks, training.train_step = build_networks, train_step
    sys.argv = [script, *flags]
    try:
        runpy.run_path(str(ROOT / script), run_name="__main__")
    except SystemExit as exc:
        if exc.code:
            raise
    nets = built["nets"]
    torch.save({"agent": nets.agent.state_dict(), "resnet": nets.resnet.state_dict(), "policies": policies},
               Path(out) / f"rank{os.environ['RANK']}.t7")


if __name__ == "__main__":
    main()
