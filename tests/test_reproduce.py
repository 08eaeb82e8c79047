"""``reproduce.py``: the paper's claims from real runs, end to end on a small
share of the digits (every step a real script run), re-run without running
anything again, an interrupted step continued, and its bad input refused."""

from __future__ import annotations

import json
import shutil

import pytest

import reproduce
import utils.data
from claims import Verdict
from conftest import assert_legible_png, assert_one_line_error, run_main
from experiment import GPU_PLANS, PLANS, Ref, Results, declare
from utils.pipeline import load_script

FLAGS = ["--seeds", "2", "--base_epochs", "1", "--cl_epochs", "0", "--ft_epochs", "0", "--penalties", "-1", "-5",
         "--penalty", "-5", "--shallower", "R8_Digits", "--device", "cpu"]
VERDICTS = {v.value for v in Verdict}


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
                    "$ python cl_training.py", "--cl_step 1", "--cl_step 15", "--policy firstk --k",
                    "--policy randomk --k", "--pretrained out/seed_1/nocl/ckpt_E_0_", "$ python test.py"):
        assert command in result.stdout, command
    report = json.loads((out / "report.json").read_text())
    assert [c["number"] for c in report["claims"]] == ["1", "1b", "2", "3", "3b", "4", "5"]
    assert all(c["verdict"] in VERDICTS for c in report["claims"]), [c["verdict"] for c in report["claims"]]
    results = Results.from_json(report["results"])
    assert results.seeds == [0, 1] and results.test_images == 36
    for seed in (0, 1):
        cl, ft = results.get(f"seed_{seed}/cl"), results.get(f"seed_{seed}/ft_-5")
        assert results.get(f"seed_{seed}/firstk_frozen").profile.block_usage == cl.k  # at the curriculum's count
        randomk = results.get(f"seed_{seed}/randomk_ft").profile
        assert randomk.block_usage == ft.k and randomk.block_usage_std == 0
        assert ft.k == max(1, round(ft.profile.block_usage))
        assert cl.curve.epoch == [0] and cl.curve.handover == 14  # one block per epoch: 15 blocks by epoch 14
        distributek = results.get(f"seed_{seed}/distributek_frozen")
        assert (distributek.profile is not None) == (cl.k >= 3)  # at least one block of each of the 3 stages
        if distributek.profile is None:
            assert "stages" in distributek.note and f"seed_{seed}/distributek_frozen: not run" in result.stdout
    assert {c["number"]: c["verdict"] for c in report["claims"]}["4"] in ("still rising", "not measured",
                                                                          "not testable here")
    text = (out / "report.md").read_text()
    assert "| 1b |" in text and "88.6%" in text and "over 2 seeds" in text and "## Settings" in text
    assert "## The paper's Table 1 beside ours" in text and "| DistributeK | 23.4/10 → 90.2/7 |" in text
    for name in ("tradeoff.png", "comparisons.png", "curves.png"):
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
    (["--device", "tpu"], "--device"),
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
    assert "finetune.py: " in result.stdout and "cl_training.py: 6 runs" in result.stdout
    assert "GPU-hours" in result.stdout and "-10" in result.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("plans,model", [(PLANS, m) for m in PLANS] + [(GPU_PLANS, m) for m in GPU_PLANS])
def test_every_declared_run_parses_with_its_scripts_own_parser(plans, model):
    runs = declare(plans[model], model)
    names = [run.name for run in runs]
    assert len(names) == len(set(names))  # one folder each
    for i, run in enumerate(runs):
        assert all(ref in names[:i] for ref in run.starts_from), run.name  # after what it starts from
        if not run.script.endswith(".py"):
            continue
        argv = ["--model", run.model, "--data_dir", "data/", "--workers", "0"]
        argv += [("3" if f.field == "k" else "file.t7") if isinstance(f, Ref) else str(f) for f in run.flags]
        if run.trains:
            argv += ["--cv_dir", f"out/{run.name}"]
        parsed = load_script(run.script).get_args_parser().parse_args(argv)  # a bad flag exits
        assert parsed.model == run.model
    seeds = plans[model].seeds
    assert sum(run.script == "cl_training.py" for run in runs) == 2 * seeds
    assert sum(run.script == "finetune.py" for run in runs) == seeds * (len(plans[model].penalties) + 4)


def test_the_demo_reads_the_digits_plan():
    import demo

    plan = PLANS["R32_Digits"]
    assert demo.DEFAULTS["base_epochs"] == plan.base_epochs and demo.DEFAULTS["penalty"] == plan.penalty
    assert demo.DEFAULTS["base_milestones"] == [int(m) for m in plan.values("pretrain", "milestones")]
    assert demo.DEFAULTS["ft_lr"] == float(plan.flag("ft", "lr"))
    assert sorted([demo.DEFAULTS["penalty"], *demo.DEFAULTS["sweep_penalties"]]) == sorted(plan.penalties)


def test_fashion_has_a_cpu_and_a_gpu_plan_chosen_by_hardware(tmp_path):
    cpu = run_main(reproduce, "--model", "R20_Fashion", "--plan", "--hardware", "cpu", cwd=tmp_path)
    gpu = run_main(reproduce, "--model", "R20_Fashion", "--plan", "--hardware", "gpu", cwd=tmp_path)
    assert cpu.returncode == 0 and gpu.returncode == 0
    assert "--train_subset" not in " ".join(GPU_PLANS["R20_Fashion"].cl_flags)  # all 60,000 images on a GPU
    subset = int(PLANS["R20_Fashion"].flag("cl", "train_subset"))
    assert subset == PLANS["R20_Fashion"].train_images < GPU_PLANS["R20_Fashion"].train_images == 60000
    for part in ("pretrain", "cl", "ft"):  # the base, the curriculum and finetuning see the same images
        assert PLANS["R20_Fashion"].flag(part, "train_subset") == str(subset)
    assert cpu.stdout != gpu.stdout and list(tmp_path.iterdir()) == []
    assert reproduce.default_out("R20_Fashion", "gpu") != reproduce.default_out("R20_Fashion", "cpu")
