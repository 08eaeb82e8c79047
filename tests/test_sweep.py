"""``sweep.py``: one finetuned model per penalty, resumed only where the settings match."""

from __future__ import annotations

import json

import pytest
import torch

import cl_training
import engine
import sweep
from conftest import cifar_folder, run_main
from models import build_agent, build_resnet, get_config
from utils import to_standard_keys


@pytest.fixture
def sweep_files(tmp_path, monkeypatch):
    """A base, a curriculum checkpoint, and finetuning and profiling replaced by
    recorders (the real ones run in the demo's end-to-end test)."""
    cfg = get_config("R32_Digits")
    base, cl = tmp_path / "base.t7", tmp_path / "cl.t7"
    torch.save({"state_dict": to_standard_keys(build_resnet(cfg).state_dict())}, base)
    torch.save({"agent": build_agent(cfg).state_dict(), "epoch": 5}, cl)
    calls = []

    def fake_finetune(args, penalty, folder, settings):
        calls.append(("finetune", penalty))
        return {"accuracy": 0.9, "flops": 1e8 * -penalty, "block_usage": 10.0}

    def fake_profile(args, out, load, base):
        calls.append(("full", None))
        return {"accuracy": 0.95, "flops": 1.6e8, "full_resnet_flops": 1.38e8}

    monkeypatch.setattr(sweep, "finetune_and_profile", fake_finetune)
    monkeypatch.setattr(sweep, "run_test_script", fake_profile)
    argv = ["--pretrained", str(cl), "--base", str(base), "--cv_dir", str(tmp_path / "sweep"),
            "--penalties", "-1", "-5", "--max_epochs", "2"]
    return {"argv": argv, "calls": calls, "cl": cl, "tmp": tmp_path}


def run(argv):
    return sweep.run_sweep(sweep.get_args_parser().parse_args(argv))


def test_sweep_finetunes_each_penalty_and_collects_the_reports(sweep_files):
    result = run(sweep_files["argv"])
    assert sweep_files["calls"] == [("full", None), ("finetune", -1.0), ("finetune", -5.0)]
    assert [(r["penalty"], r["flops"]) for r in result["runs"]] == [(-1.0, 1e8), (-5.0, 5e8)]
    saved = json.loads((sweep_files["tmp"] / "sweep" / "sweep.json").read_text())
    assert saved["runs"] == result["runs"] and saved["full"]["accuracy"] == 0.95
    assert (sweep_files["tmp"] / "sweep" / "tradeoff.png").read_bytes()[:4] == b"\x89PNG"


def test_sweep_with_the_same_settings_resumes_without_finetuning_again(sweep_files):
    first = run(sweep_files["argv"])
    sweep_files["calls"].clear()
    assert run(sweep_files["argv"]) == first
    assert sweep_files["calls"] == []


def test_sweep_from_another_curriculum_checkpoint_finetunes_again(sweep_files):
    run(sweep_files["argv"])
    sweep_files["calls"].clear()
    # same file name, other content: the earlier models no longer belong to this sweep
    agent = build_agent(get_config("R32_Digits"))
    torch.save({"agent": agent.state_dict(), "epoch": 9}, sweep_files["cl"])
    run(sweep_files["argv"])
    assert sweep_files["calls"] == [("finetune", -1.0), ("finetune", -5.0)]


def test_sweep_with_other_epochs_finetunes_again_but_keeps_the_full_profile(sweep_files):
    run(sweep_files["argv"])
    sweep_files["calls"].clear()
    argv = [*sweep_files["argv"][:-1], "3"]  # --max_epochs 3
    run(argv)
    assert sweep_files["calls"] == [("finetune", -1.0), ("finetune", -5.0)]


def test_a_sweep_cut_short_in_a_penalty_resumes_its_run_instead_of_setting_it_aside(tmp_path, monkeypatch):
    cifar_folder(tmp_path, n_train=2, n_test=4, seed=4)
    common = ["--model", "R32_C10", "--data_dir", "data", "--device", "cpu", "--workers", "0", "--batch_size", "5",
              "--seed", "0", "--base", "base.t7"]
    assert run_main(cl_training, *common, "--max_epochs", "0", "--cv_dir", "cl", cwd=tmp_path).returncode == 0
    pretrained = str(next((tmp_path / "cl").glob("ckpt_E_0_*.t7")).relative_to(tmp_path))
    argv = [*common, "--pretrained", pretrained, "--penalties", "-2", "--max_epochs", "2", "--cv_dir", "sweep",
            "--limit", "2"]
    save_state = engine.save_state

    def killed_after_epoch_1(run, phase, epoch, *rest, **named):
        saved = save_state(run, phase, epoch, *rest, **named)
        if epoch == 1:
            raise KeyboardInterrupt  # as a kill after the state of epoch 1 is on disk
        return saved

    monkeypatch.setattr(engine, "save_state", killed_after_epoch_1)
    assert run_main(sweep, *argv, cwd=tmp_path).returncode == 130
    monkeypatch.setattr(engine, "save_state", save_state)
    again = run_main(sweep, *argv, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "--resume" in again.stdout and "resuming the run" in again.stdout and "after epoch 1" in again.stdout
    folder = tmp_path / "sweep" / "penalty_-2"
    assert not list(folder.glob("earlier-*"))
    assert [line.split(" |")[0] for line in again.stdout.splitlines() if line.startswith("E: ")] == ["E: 2"]
    assert json.loads((tmp_path / "sweep" / "sweep.json").read_text())["runs"][0]["images"] == 2
