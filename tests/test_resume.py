"""Runs that survive anything: killed with SIGKILL inside an epoch and inside a
checkpoint write, resumed with --resume each time, they end with exactly the
parameters of a run never interrupted; every checkpoint on disk loads, no
temporary file remains, and each epoch is logged once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import cl_training
import finetune
import visualize
from conftest import assert_one_line_error, cifar_folder, run_main, script_env
from models import build_resnet, get_config, to_standard_keys
from utils import BlockDropError, load_state_file
from utils.pipeline import load_script
from utils.runstate import RunState, run_files

INTERRUPT = Path(__file__).resolve().parent / "interrupt.py"


def run(script: str, flags: list, cwd: Path) -> subprocess.CompletedProcess:
    """``script`` with ``flags`` run to its end in this process (only the runs to be
    killed need a process of their own)."""
    result = run_main(load_script(script), *flags, cwd=cwd)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def run_and_kill(moment: str, script: str, flags: list, cwd: Path) -> None:
    """Start ``script`` frozen at ``moment`` (see interrupt.py), then SIGKILL it there."""
    marker = cwd / "frozen"
    marker.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, str(INTERRUPT), str(marker), moment, script, *map(str, flags)],
                            cwd=cwd, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"{script} ended before {moment}: {proc.stderr.read()[-2000:]}")
        assert time.time() < deadline, f"{script} never reached {moment}"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return cifar_folder(tmp_path_factory.mktemp("resume"), n_train=8, n_test=8, seed=3)  # 40 images: 5 batches of 8


def common(cv_dir: str) -> list:
    return ["--model", "R32_C10", "--data_dir", "data", "--base", "base.t7", "--device", "cpu", "--workers", "0",
            "--batch_size", "8", "--seed", "0", "--max_epochs", "3", "--test_every", "2", "--cv_dir", cv_dir]


@pytest.mark.slow
@pytest.mark.parametrize("script", ["cl_training.py", "finetune.py"])
def test_a_run_killed_anywhere_and_resumed_ends_as_if_never_interrupted(workdir, script):
    name = Path(script).stem
    run(script, common(f"cv/{name}_whole"), workdir)
    flags = common(f"cv/{name}_killed")
    resume = ["--resume", "--cv_dir", f"cv/{name}_killed"]
    run_and_kill("step:1:2", script, flags, workdir)  # inside epoch 1
    run_and_kill("write:2", script, resume, workdir)  # inside the second checkpoint write after resuming
    killed = workdir / "cv" / f"{name}_killed"
    assert list(killed.glob(".*.tmp")), "the kill inside a write leaves a partial temporary file"
    final = run(script, resume, workdir)
    assert "resuming the run" in final.stdout and "removed" in final.stdout  # the partial file went first

    whole = workdir / "cv" / f"{name}_whole"
    assert not list(killed.glob(".*.tmp"))
    for path in killed.glob("*.t7"):
        load_state_file(path)  # every checkpoint on disk loads
    a, b = (torch.load(folder / "last.t7", weights_only=True) for folder in (whole, killed))
    assert a["epoch"] == b["epoch"] == 3
    for part in ("agent", "resnet") if name == "finetune" else ("agent",):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    assert sorted(p.name for p in whole.glob("ckpt_E_*")) == sorted(p.name for p in killed.glob("ckpt_E_*"))
    rows = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [(r["split"], r["epoch"]) for r in rows] == \
        [(r["split"], r["epoch"]) for r in map(json.loads, (whole / "metrics.jsonl").read_text().splitlines())]


# --------------------------------------------------------------------------
# the run folder, --resume's flags, the recorded base, non-finite values, bad input
# --------------------------------------------------------------------------
def tiny(workdir: Path, script, *flags: str):
    """``script``'s command line in this process, on the generated data, from ``workdir``."""
    return run_main(script, "--model", "R32_C10", "--data_dir", "data", "--device", "cpu", "--workers", "0",
                    "--batch_size", "8", "--seed", "0", *flags, cwd=workdir)


def test_a_folder_holding_a_run_is_not_overwritten_without_resume_or_restart(workdir):
    first = tiny(workdir, cl_training, "--base", "base.t7", "--max_epochs", "0", "--cv_dir", "cv/taken")
    assert first.returncode == 0, first.stderr
    folder = workdir / "cv" / "taken"
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != ".run.lock"}
    again = tiny(workdir, cl_training, "--base", "base.t7", "--max_epochs", "0", "--cv_dir", "cv/taken")
    line = assert_one_line_error(again)
    assert "--resume" in line and "--restart" in line
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != ".run.lock"} == before  # nothing touched
    restarted = tiny(workdir, cl_training, "--base", "base.t7", "--max_epochs", "0", "--cv_dir", "cv/taken",
                     "--restart")
    assert restarted.returncode == 0, restarted.stderr
    kept = [p for p in folder.iterdir() if p.name.startswith("earlier-")]
    assert len(kept) == 1 and {p.name: p.read_bytes() for p in kept[0].iterdir() if p.is_file() and p.name != ".run.lock"} == before


def test_resume_keeps_the_runs_flags_and_refuses_a_contradicting_one(workdir):
    folder = "cv/flags"
    assert tiny(workdir, finetune, "--base", "base.t7", "--max_epochs", "0", "--lr", "1e-3",
                "--cv_dir", folder).returncode == 0
    contradiction = tiny(workdir, finetune, "--resume", "--cv_dir", folder, "--lr", "0.01")
    line = assert_one_line_error(contradiction)
    assert "--lr" in line and "--max_epochs" in line  # and which flags may change
    same = tiny(workdir, finetune, "--resume", "--cv_dir", folder, "--lr", "1e-3", "--max_epochs", "1")
    assert same.returncode == 0, same.stderr
    assert [ln.split(" | ")[0] for ln in same.stdout.splitlines() if ln.startswith("E: ")] == ["E: 1"]
    assert "lr: 0.001\n" in (workdir / folder / "args.txt").read_text()
    nothing = tiny(workdir, finetune, "--resume", "--cv_dir", "cv/empty")
    assert "no run to resume" in assert_one_line_error(nothing)


def test_a_checkpoint_profiles_with_the_base_it_records_never_a_newer_one(workdir):
    assert tiny(workdir, cl_training, "--base", "base.t7", "--max_epochs", "0", "--cv_dir", "cv/rec").returncode == 0
    ckpt = next((workdir / "cv" / "rec").glob("ckpt_E_0_*.t7"))
    assert torch.load(ckpt, weights_only=True)["base"]["path"] == "base.t7"
    newer = workdir / "cv/pretrained/R32_C10/pk_E_999_A_0.999.t7"
    newer.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(5)
    torch.save({"state_dict": to_standard_keys(build_resnet(get_config("R32_C10")).state_dict())}, newer)
    test_script = load_script("test")
    profiled = run_main(test_script, "--model", "R32_C10", "--load", ckpt, "--data_dir", "data", "--device", "cpu",
                        "--time_images", "0", cwd=workdir)
    assert profiled.returncode == 0 and "base ResNet: base.t7" in profiled.stdout
    moved = workdir / "base_moved.t7"
    (workdir / "base.t7").rename(moved)
    try:
        missing = run_main(test_script, "--model", "R32_C10", "--load", ckpt, "--data_dir", "data",
                           "--device", "cpu", cwd=workdir)
        assert "base.t7" in assert_one_line_error(missing) and "missing" in missing.stderr
        wrong = run_main(test_script, "--model", "R32_C10", "--load", ckpt, "--base", newer, "--data_dir", "data",
                         "--device", "cpu", cwd=workdir)
        assert "is not the base" in assert_one_line_error(wrong)
    finally:
        moved.rename(workdir / "base.t7")
    newer.unlink()


def test_a_nan_loss_stops_training_in_one_line_and_leaves_the_last_good_state_newest(workdir):
    # lr times 1e30 from epoch 1 on: epoch 0 trains, epoch 1 diverges
    result = tiny(workdir, finetune, "--base", "base.t7", "--max_epochs", "3", "--cv_dir", "cv/nan",
                  "--epoch_step", "1", "--lr_decay_ratio", "1e30", "--lr", "1e-3")
    line = assert_one_line_error(result)
    assert "epoch 1, batch" in line and ("not finite" in line or "nan" in line), line
    last = torch.load(workdir / "cv" / "nan" / "last.t7", weights_only=True)
    assert last["epoch"] == 0 and all(torch.isfinite(v).all() for v in last["resnet"].values() if v.is_floating_point())


def test_weights_that_are_not_finite_are_refused_when_loaded(workdir):
    state = to_standard_keys(build_resnet(get_config("R32_C10")).state_dict())
    state["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save({"state_dict": state}, workdir / "nan_base.t7")
    result = tiny(workdir, cl_training, "--base", "nan_base.t7", "--cv_dir", "cv/nan_base")
    line = assert_one_line_error(result)
    assert "nan_base.t7" in line and "not finite" in line and "blocks.1.0.conv1.weight" in line


@pytest.mark.parametrize("flags,named", [
    (["--lr", "0"], "--lr"), (["--lr", "-1e-3"], "--lr"), (["--lr", "nan"], "--lr"),
    (["--penalty", "nan"], "--penalty"), (["--penalty", "inf"], "--penalty"),
    (["--cv_dir", "base.t7"], "is a file"),
])
def test_bad_training_flags_are_one_line_and_touch_nothing(workdir, flags, named):
    before = sorted(p.name for p in workdir.rglob("*"))
    assert named in assert_one_line_error(tiny(workdir, finetune, "--base", "base.t7", *flags))
    assert sorted(p.name for p in workdir.rglob("*")) == before


def test_a_positive_penalty_is_a_warning(workdir):
    result = tiny(workdir, finetune, "--base", "base.t7", "--max_epochs", "0", "--penalty", "2",
                  "--cv_dir", "cv/positive")
    assert result.returncode == 0 and "rewarded" in result.stdout


def test_output_paths_that_cannot_be_written_are_one_line_before_any_work(workdir):
    test_script = load_script("test")
    folder = run_main(test_script, "--model", "R32_C10", "--data_dir", "data", "--json", "cv", cwd=workdir)
    assert "is a folder" in assert_one_line_error(folder)
    under_a_file = run_main(test_script, "--model", "R32_C10", "--data_dir", "data", "--json", "base.t7/out.json",
                            cwd=workdir)
    assert "is a file" in assert_one_line_error(under_a_file)
    out_file = run_main(visualize, "--model", "R32_C10", "--load", "missing.t7", "--out", "base.t7", cwd=workdir)
    assert "is a file" in assert_one_line_error(out_file)


def test_an_operating_system_error_is_one_line_naming_the_path(workdir, monkeypatch):
    def disk_full(obj, f, *args, **kwargs):
        raise OSError(28, "No space left on device", str(f))

    monkeypatch.setattr(torch, "save", disk_full)
    result = tiny(workdir, cl_training, "--base", "base.t7", "--max_epochs", "0", "--cv_dir", "cv/full_disk")
    line = assert_one_line_error(result)
    assert "No space left on device" in line and "full_disk" in line
    assert not list((workdir / "cv" / "full_disk").glob(".*.tmp"))


def test_an_agent_with_nan_weights_is_refused_in_one_line(workdir):
    from models import build_agent

    agent = build_agent(get_config("R32_C10")).state_dict()
    agent["logit.bias"][3] = float("nan")
    torch.save({"agent": agent, "epoch": 1}, workdir / "nan_agent.t7")
    result = run_main(load_script("test"), "--model", "R32_C10", "--load", "nan_agent.t7", "--base", "base.t7",
                      "--data_dir", "data", "--device", "cpu", cwd=workdir)
    line = assert_one_line_error(result)
    assert "nan_agent.t7" in line and "logit.bias" in line


# --------------------------------------------------------------------------
# pretrain.py on the same loop; the runtime flags changed on resume
# --------------------------------------------------------------------------
def base_flags(cv_dir: str) -> list:
    return ["--model", "R32_C10", "--data_dir", "data", "--device", "cpu", "--workers", "0", "--batch_size", "8",
            "--seed", "0", "--epochs", "3", "--milestones", "2", "--cv_dir", cv_dir]


@pytest.mark.slow
def test_a_base_run_killed_and_resumed_ends_bit_identical_to_one_never_interrupted(workdir):
    run("pretrain.py", base_flags("cv/base_whole"), workdir)
    run_and_kill("step:2:1", "pretrain.py", base_flags("cv/base_killed"), workdir)  # inside epoch 2
    resume = ["--resume", "--cv_dir", "cv/base_killed"]
    run_and_kill("write:1", "pretrain.py", resume, workdir)  # inside the first write after resuming
    final = run("pretrain.py", resume, workdir)
    assert "resuming the run" in final.stdout and "after epoch 1" in final.stdout
    whole, killed = workdir / "cv" / "base_whole", workdir / "cv" / "base_killed"
    bases = [sorted(folder.glob("pk_E_3_A_*.t7")) for folder in (whole, killed)]
    assert len(bases[0]) == len(bases[1]) == 1 and bases[0][0].name == bases[1][0].name
    a, b = (torch.load(found[0], weights_only=True)["state_dict"] for found in bases)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not list(killed.glob(".*.tmp"))
    rows = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]  # each epoch logged once
    assert rows == [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    done = run("pretrain.py", resume, workdir)  # a finished run: nothing to train, the base stays
    assert not [ln for ln in done.stdout.splitlines() if ln.startswith("E: ")] and bases[1][0].name in done.stdout


def test_pretrain_refuses_a_folder_holding_a_run_and_restart_sets_it_aside_with_its_base(workdir):
    flags = [*base_flags("cv/base_guard"), "--epochs", "1"]
    assert run_main(load_script("pretrain"), *flags, cwd=workdir).returncode == 0
    folder = workdir / "cv" / "base_guard"
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != ".run.lock"}
    assert any(name.startswith("pk_E_1_A_") for name in before) and "last.t7" in before
    again = run_main(load_script("pretrain"), *flags, cwd=workdir)
    line = assert_one_line_error(again)
    assert "--resume" in line and "--restart" in line
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != ".run.lock"} == before  # nothing touched
    restarted = run_main(load_script("pretrain"), *flags, "--restart", cwd=workdir)
    assert restarted.returncode == 0, restarted.stderr
    kept = [p for p in folder.iterdir() if p.name.startswith("earlier-")]
    assert len(kept) == 1 and {p.name: p.read_bytes() for p in kept[0].iterdir() if p.is_file() and p.name != ".run.lock"} == before
    assert len(list(folder.glob("pk_E_1_A_*.t7"))) == 1  # the new run's base, none replaced
    rows = (folder / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1  # a new log, not appended to the earlier one


def test_amp_and_memory_format_may_change_when_a_run_is_resumed(workdir):
    assert tiny(workdir, cl_training, "--base", "base.t7", "--max_epochs", "0", "--cv_dir", "cv/runtime").returncode == 0
    resumed = tiny(workdir, cl_training, "--resume", "--cv_dir", "cv/runtime", "--max_epochs", "1", "--amp",
                   "--memory_format", "channels_last")
    assert resumed.returncode == 0, resumed.stderr
    assert "E: 1" in resumed.stdout  # the epoch after the resumed state, under bfloat16 autocast on the CPU
    assert [ln.split(" | ")[0] for ln in resumed.stdout.splitlines() if ln.startswith("E: ")] == ["E: 1"]
    args = (workdir / "cv" / "runtime" / "args.txt").read_text()
    assert "amp: True\n" in args and "memory_format: channels_last\n" in args
    last = torch.load(workdir / "cv" / "runtime" / "last.t7", weights_only=True)
    assert last["epoch"] == 1 and last["args"]["memory_format"] == "channels_last"


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["write:1", "step:0:0", "step:0:3", "write:2"])
def test_a_run_killed_anywhere_in_its_first_epoch_holds_no_run_or_a_run_to_resume(workdir, moment):
    """Killed inside its first write (the state before epoch 0), before or inside
    epoch 0's training, or inside its first checkpoint (after epoch 0's log
    lines): the folder holds no run, and a new run starts there, or a saved
    state, and --resume continues it; either way the run ends as one never
    interrupted."""
    name = f"first_{moment.replace(':', '_')}"
    flags = [*common(f"cv/{name}"), "--max_epochs", "0"]
    run_and_kill(moment, "cl_training.py", flags, workdir)
    folder = workdir / "cv" / name
    try:
        RunState.newest(folder)
        state = True
    except BlockDropError:
        state = False
    assert state or not run_files(folder), (moment, [p.name for p in run_files(folder)])
    finish = run_main(cl_training, *(["--resume", "--cv_dir", f"cv/{name}"] if state else flags), cwd=workdir)
    assert finish.returncode == 0, (moment, finish.stderr)
    whole = workdir / "cv" / "first_whole"
    if not whole.exists():
        assert run_main(cl_training, *common("cv/first_whole"), "--max_epochs", "0", cwd=workdir).returncode == 0
    a, b = (torch.load(f / "last.t7", weights_only=True)["agent"] for f in (whole, folder))
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [(r["split"], r["epoch"]) for r in rows] == [("train", 0), ("test", 0)]
