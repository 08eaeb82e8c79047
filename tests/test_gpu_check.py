"""benchmarks/gpu_check.py, the one command that checks the CUDA paths: its
quick CPU form runs here, so that it cannot rot while no GPU is around; where a
GPU is, the full check runs on it (marked ``cuda``)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

from benchmarks import gpu_check
from conftest import ROOT, script_env
from models import CONFIGS

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
SECTIONS = ["{pair}: forward", "{pair}: training step", "training, --amp, channels-last", "data loader", "torchrun",
            "speed, eval, float32", "speed, training", "speed, data path", "torch.compile"]


def run_check(tmp_path, *flags: str, timeout: int, **env: str) -> tuple[subprocess.CompletedProcess, str]:
    out = tmp_path / "gpu_check.md"
    result = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *flags], cwd=tmp_path,
                            env=script_env(**env), capture_output=True, text=True, timeout=timeout)
    return result, out.read_text() if out.is_file() else ""


def table_rows(text: str) -> list[list[str]]:
    """The table's rows as cells (a cell's own | is escaped as \\|)."""
    lines = [line for line in text.splitlines() if line.startswith("| ")][1:]
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]


QUICK_FORWARD = ["R32_C10", "R110_C10", "R32_C100", "R110_C100", "R101_ImgNet", "R32_Digits"]  # and on CUDA every one


def assert_every_check_passed(result: subprocess.CompletedProcess, text: str, pair: str,
                              forward_models: list[str]) -> list[list[str]]:
    assert result.returncode == 0, (result.stdout[-4000:], result.stderr[-2000:])
    rows = table_rows(text)
    assert list(dict.fromkeys(row[0] for row in rows)) == [s.format(pair=pair) for s in SECTIONS]
    assert {row[4] for row in rows} <= {"ok", "measured", "skipped", "not compiled"}, text
    forward = [row[1].split(",")[0] for row in rows if row[0].endswith(": forward")]
    assert forward == forward_models
    checks = sum(row[4] == "ok" for row in rows)
    assert f"**{checks} of {checks} checks passed**" in text
    assert text in result.stdout  # the table printed is the table written
    return rows


@pytest.fixture(scope="module")
def quick_cpu(tmp_path_factory):
    return run_check(tmp_path_factory.mktemp("gpu_check"), "--device", "cpu", "--quick", timeout=300)


def test_the_quick_cpu_check_runs_every_section_and_passes(quick_cpu):
    result, text = quick_cpu
    rows = assert_every_check_passed(result, text, "cpu vs cpu (no GPU)", QUICK_FORWARD)
    assert sum(row[4] == "ok" for row in rows) == 12
    steps = [row[1] for row in rows if row[0].endswith("training step")]
    assert steps == ["R32_C10 curriculum step, batch 4", "R32_C10 finetuning step, batch 4"]
    assert "no GPU: the CPU in channels-last against the CPU in contiguous layout" in text
    assert "0.001 × max |CPU value| + 10 × the CPU's own float32 error" in text  # the tolerance, stated
    torchrun = next(row for row in rows if row[0] == "torchrun")
    assert torchrun[2].startswith("gloo") and "parameters equal on both processes" in torchrun[2]
    speed = [row for row in rows if row[0] == "speed, eval, float32"]
    assert {row[1].split(",")[0] for row in speed} == {"R32_C10", "R110_C10", "R101_ImgNet"}
    assert all(re.search(r"per-image \*\*\d+\.\d\d\*\*, masked \d+\.\d\d", row[2]) for row in speed)
    paths = [row for row in rows if row[0] == "speed, data path"]
    assert [row[1].split(", ")[-1] for row in paths] == ["1 worker", "0 workers", "--device_data"]
    assert all(re.search(r"images/s \(\*\*\d+\.\d\d\*\*", row[2]) for row in paths)
    assert rows[-1][1:] == ["R32_C10, batch 16", "skipped: --quick (--compile runs it)", "—", "skipped"]


def test_a_failing_check_is_one_failed_row_and_the_others_go_on(tmp_path, monkeypatch, capsys):
    def broken(*args):
        raise RuntimeError("pinned memory is unavailable\nsecond line")

    monkeypatch.setattr(gpu_check, "loader_check", broken)
    code = gpu_check.cli(["--device", "cpu", "--quick", "--only", "loader", "compile", "--out",
                          str(tmp_path / "out.md")])
    assert code == 1
    rows = table_rows((tmp_path / "out.md").read_text())
    assert [row[4] for row in rows] == ["**FAILED**", "skipped"]
    assert rows[0][2] == "RuntimeError: pinned memory is unavailable"
    assert "FAILED: utils.runtime.data_loaders" in capsys.readouterr().out
    assert "**0 of 1 checks passed**" in (tmp_path / "out.md").read_text()


@pytest.mark.parametrize("flags", [[], ["--device", "cuda"]])
def test_without_a_gpu_the_check_on_cuda_is_one_line_and_exit_status_2(monkeypatch, capsys, tmp_path, flags):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.cli([*flags, "--out", str(tmp_path / "out.md")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA GPU is available" in err[0]
    assert "--device cpu" in err[0] and not (tmp_path / "out.md").exists()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_full_check_passes_on_cuda(tmp_path):
    result, text = run_check(tmp_path, "--device", "cuda", timeout=900)
    rows = assert_every_check_passed(result, text, "cuda vs cpu", list(CONFIGS))
    precisions = " ".join(row[1] for row in rows if row[0] == "training, --amp, channels-last")
    assert "float16 autocast + GradScaler" in precisions
    assert "nccl on cuda" in text or "gloo on cuda" in text
