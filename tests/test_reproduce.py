"""``reproduce.py``: the paper's claims from real runs, end to end on a small
share of the digits (every step a real script run), re-run without running
anything again, an interrupted step continued, and its bad input refused."""

from __future__ import annotations

import json
import shutil

import pytest

import reproduce
import utils.data
from conftest import assert_legible_png, assert_one_line_error, run_main

FLAGS = ["--seeds", "2", "--base_epochs", "1", "--cl_epochs", "0", "--ft_epochs", "0", "--penalties", "-1", "-5",
         "--penalty", "-5", "--shallower", "R8_Digits", "--device", "cpu"]
VERDICTS = {"holds", "does not hold", "not shown (within noise)", "partly", "not shown (no comparable point)"}


@pytest.fixture(scope="module")
def small_digits():
    """A tenth of the digits (144 training and 36 test images), for speed."""
    real = utils.data.digits_arrays
    (xtr, ytr), (xte, yte) = real()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(utils.data, "digits_arrays", lambda: ((xtr[::10], ytr[::10]), (xte[::10], yte[::10])))
        yield


@pytest.fixture(scope="module")
def first(small_digits, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reproduce")
    result = run_main(reproduce, *FLAGS, "--out", "out", cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder, result


@pytest.mark.slow
def test_every_step_runs_as_its_command_and_the_report_judges_every_claim(first):
    folder, result = first
    out = folder / "out"
    for command in ("$ python pretrain.py --model R32_Digits", "$ python pretrain.py --model R8_Digits",
                    "$ python cl_training.py", "--cl_step 3", "--cl_step 15", "--policy firstk --k",
                    "--policy randomk --k", "--pretrained out/seed_1/nocl/ckpt_E_0_", "$ python test.py"):
        assert command in result.stdout, command
    report = json.loads((out / "report.json").read_text())
    assert [c["number"] for c in report["claims"]] == ["1", "1b", "2", "3", "3b", "4", "5"]
    assert all(c["verdict"] in VERDICTS for c in report["claims"]), [c["verdict"] for c in report["claims"]]
    assert report["seeds"] == [0, 1] and report["test_images"] == 36 and set(report["runs"]) == {"0", "1"}
    for run in report["runs"].values():
        assert run["firstk_frozen"]["block_usage"] == run["k_frozen"]  # FirstK at the curriculum's block count
        assert run["randomk_ft"]["block_usage"] == run["k_ft"] and run["randomk_ft"]["block_usage_std"] == 0
        assert run["k_ft"] == round(run["ft"]["-5"]["block_usage"])
    text = (out / "report.md").read_text()
    assert "| 1b |" in text and "88.6%" in text and "over 2 seeds" in text and "## Settings" in text
    for name in ("tradeoff.png", "comparisons.png"):
        assert_legible_png(out / "figures" / name)


@pytest.mark.slow
def test_a_second_run_runs_nothing_again_and_an_interrupted_step_continues(first):
    folder, _ = first
    out = folder / "out"
    claims = json.loads((out / "report.json").read_text())["claims"]
    again = run_main(reproduce, *FLAGS, "--out", "out", cwd=folder)
    assert again.returncode == 0 and "$ python" not in again.stdout
    assert json.loads((out / "report.json").read_text())["claims"] == claims
    # a step stopped after its last state was saved, before it was recorded: continued, not run again
    (out / "seed_1" / "ft_-5" / "step.json").unlink()
    resumed = run_main(reproduce, *FLAGS, "--out", "out", cwd=folder)
    assert resumed.returncode == 0, resumed.stderr
    commands = [ln for ln in resumed.stdout.splitlines() if ln.startswith("$ python")]
    assert len(commands) == 1 and "--cv_dir out/seed_1/ft_-5 --resume" in commands[0]
    assert "is complete" in resumed.stdout and "E: " not in resumed.stdout
    assert json.loads((out / "report.json").read_text())["claims"] == claims
    # a step whose folder holds a run of other settings: set aside, and run again
    shutil.copy(out / "seed_0" / "ft_-1" / "started.json", out / "seed_0" / "ft_-5" / "started.json")
    (out / "seed_0" / "ft_-5" / "step.json").unlink()
    redone = run_main(reproduce, *FLAGS, "--out", "out", cwd=folder)
    assert "--cv_dir out/seed_0/ft_-5 --restart" in redone.stdout
    assert list((out / "seed_0" / "ft_-5").glob("earlier-*"))


@pytest.mark.parametrize("flags,named", [
    (["--seeds", "0"], "--seeds"),
    (["--penalties", "-1", "x"], "--penalties"),
    (["--penalties", "-1", "nan"], "--penalties"),
    (["--penalty", "-3"], "is not one of --penalties"),
    (["--penalties", "-1", "-1.0000001", "--penalty", "-1"], "the same"),
    (["--shallower", "R99_Digits"], "R99_Digits"),
    (["--out", "a_file"], "is a file"),
    (["--base", "missing.t7"], "missing.t7"),
])
def test_bad_input_is_one_line_and_touches_nothing(tmp_path, flags, named):
    (tmp_path / "a_file").write_text("keep me")
    result = run_main(reproduce, *flags, cwd=tmp_path)
    assert named in assert_one_line_error(result)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a_file"]
    assert (tmp_path / "a_file").read_text() == "keep me"


def test_the_plan_prints_the_runs_and_a_cost_without_running_anything(tmp_path):
    result = run_main(reproduce, "--model", "R110_C10", "--plan", cwd=tmp_path)
    assert result.returncode == 0 and "R20_C10, R32_C10, R44_C10, R56_C10" in result.stdout
    assert "GPU-hours" in result.stdout and "-10" in result.stdout
    assert list(tmp_path.iterdir()) == []
