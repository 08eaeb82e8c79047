"""The seeded trajectory that tests/test_fidelity.py pins, run in a process of
its own so that the test can choose the CPU kernels (ATen reads
``ATEN_CPU_CAPABILITY`` when torch is imported):

    python tests/pinned_run.py WORKDIR

Two curriculum epochs, then two finetuning epochs from the curriculum's epoch-0
checkpoint, of R32_C10 on generated CIFAR-layout data, seed 0, one CPU thread.
Prints one JSON object: each run's printed lines and ``args.txt``, and
checksums of the networks it ends with, per group of tensors (``_checksums``),
and the CPU capability ATen ran at.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import cl_training  # noqa: E402
import finetune  # noqa: E402
import training  # noqa: E402
from conftest import randomize_bn, standard_layout, write_cifar10  # noqa: E402
from models import build_resnet, get_config  # noqa: E402

RUNNING_STATS = ("running_mean", "running_var")


def _sums(tensors: list[torch.Tensor]) -> dict:
    tensors = [t.double() for t in tensors]
    return {"sum": sum(t.sum().item() for t in tensors), "abs": sum(t.abs().sum().item() for t in tensors)}


def _checksums(state: dict) -> dict:
    """Sum and sum of absolute values of: every floating-point tensor of the
    state dict ("all"); the learned tensors, every one but BatchNorm's running
    statistics ("learned"); the running means and the running variances."""
    floats = sorted((k, v) for k, v in state.items() if v.is_floating_point())
    return {
        "all": _sums([v for _, v in floats]),
        "learned": _sums([v for k, v in floats if not k.endswith(RUNNING_STATS)]),
        "running_mean": _sums([v for k, v in floats if k.endswith("running_mean")]),
        "running_var": _sums([v for k, v in floats if k.endswith("running_var")]),
    }


def run(tmp: Path) -> dict:
    write_cifar10(tmp / "data", n_train=16, n_test=24, seed=0)
    torch.manual_seed(1)
    base = tmp / "base.t7"
    torch.save({"state_dict": standard_layout(randomize_bn(build_resnet(get_config("R32_C10")), seed=1)
                                              .state_dict())}, base)
    common = ["--model", "R32_C10", "--data_dir", str(tmp / "data"), "--base", str(base), "--seed", "0",
              "--workers", "0", "--device", "cpu", "--max_epochs", "1"]
    held = {}
    real = training.build_networks

    def spy(*args, **kwargs):
        nets = real(*args, **kwargs)
        held["agent"], held["resnet"] = nets.agent, nets.resnet
        return nets

    training.build_networks = spy
    torch.set_num_threads(1)
    runs = {"capability": torch.backends.cpu.get_cpu_capability()}
    for name, script, extra in [
        ("cl", cl_training, ["--batch_size", "16", "--cv_dir", str(tmp / "cl")]),
        ("ft", finetune, ["--batch_size", "4", "--lr", "1e-3", "--cv_dir", str(tmp / "ft"),
                          "--pretrained", "CL_CKPT"]),
    ]:
        if name == "ft":
            extra[-1] = str(next((tmp / "cl").glob("ckpt_E_0_*.t7")))
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            script.main(script.get_args_parser().parse_args(common + extra))
        lines = [ln for ln in out.getvalue().splitlines() if not ln.startswith(("loaded ", "base ResNet: "))]
        runs[name] = {"lines": lines, "agent": _checksums(held["agent"].state_dict()),
                      "resnet": _checksums(held["resnet"].state_dict()),
                      "args": (tmp / name / "args.txt").read_text()}
    return runs


if __name__ == "__main__":
    print(json.dumps(run(Path(sys.argv[1]))))
