"""``visualize.py``: the figures of what an agent learned, end to end on the
R32_Digits test set (offline, CPU), and its one-line errors for bad inputs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import visualize as visualize_script
from conftest import (
    ROOT,
    assert_legible_png,
    assert_one_line_error,
    constant_policy_agent,
    run_main,
    script_env,
    strip_nbt,
)
from models import build_agent, build_resnet, get_config

VISUALIZE = ROOT / "visualize.py"
FOUR_PNGS = ["policies.png", "blocks_hist.png", "keep_rate.png", "easy_hard.png"]
LIMIT = 24  # test images profiled: enough for every figure, fast on a CPU

# the constant policy of the R32_Digits checkpoint: 15 blocks, 10 kept
KEEP = [True, False, True, True, True, False, True, True, False, True, True, False, True, True, False]
KEEP_STRING = "".join("1" if k else "0" for k in KEEP)

SWEEP = {
    "model": "R32_Digits",
    "full": {"accuracy": 0.975, "block_usage": 15.0, "block_usage_std": 0.0, "flops": 1.63e8,
             "flops_std": 0.0, "resnet_flops": 1.38e8, "policy_flops": 2.45e7,
             "full_resnet_flops": 1.38e8, "unique_policies": 1, "images": 360, "num_blocks": 15},
    # deliberately not in order of FLOPs
    "runs": [
        {"penalty": -10.0, "checkpoint": "c.t7", "accuracy": 0.968, "flops": 1.31e8, "block_usage": 11.5,
         "unique_policies": 20},
        {"penalty": -1.0, "checkpoint": "a.t7", "accuracy": 0.921, "flops": 8.1e7, "block_usage": 6.2,
         "unique_policies": 9},
        {"penalty": -5.0, "checkpoint": "b.t7", "accuracy": 0.955, "flops": 1.05e8, "block_usage": 8.9,
         "unique_policies": 14},
    ],
}


def visualize_command(*args) -> list[str]:
    return [sys.executable, str(VISUALIZE), *map(str, args)]


# --------------------------------------------------------------------------
# one set of runs for the whole module: good and bad inputs, all at once
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("visualize")
    cfg = get_config("R32_Digits")
    torch.manual_seed(0)
    agent = constant_policy_agent(build_agent(cfg), KEEP)
    ckpt = tmp / "run" / "ckpt_E_10_A_0.500_R_1.00E-01_S_10.00_#_1.t7"
    ckpt.parent.mkdir()
    torch.save({"agent": agent.state_dict(), "resnet": strip_nbt(build_resnet(cfg).state_dict()),
                "epoch": 10, "reward": 0.1, "acc": 0.5}, ckpt)
    r110 = tmp / "r110.t7"
    torch.save({"agent": build_agent(get_config("R110_C10")).state_dict(), "epoch": 1}, r110)
    sweep = tmp / "sweep.json"
    sweep.write_text(json.dumps(SWEEP))
    malformed = tmp / "malformed.json"
    malformed.write_text('{"model": "R32_Digits", "runs": [{"penalty": -5.0, "accuracy": ')
    no_flops = tmp / "no_flops.json"
    no_flops.write_text(json.dumps({"runs": [{"penalty": -5.0, "accuracy": 0.9}]}))

    taken = tmp / "taken"
    taken.mkdir()
    (taken / "policies.json").write_bytes(ckpt.read_bytes())  # a checkpoint under an output's name

    common = ["--model", "R32_Digits", "--device", "cpu", "--limit", LIMIT]
    cases = {
        "default_out": ["--load", ckpt, *common],
        "sweep": ["--load", ckpt, *common, "--sweep", sweep, "--out", tmp / "swept",
                  "--log_dir", tmp / "swept_log", "--top", 3, "--per_policy", 4],
        "missing_sweep": ["--load", ckpt, *common, "--sweep", tmp / "nope.json"],
        "malformed_sweep": ["--load", ckpt, *common, "--sweep", malformed],
        "sweep_without_flops": ["--load", ckpt, *common, "--sweep", no_flops],
        "wrong_model": ["--load", r110, *common],
        "missing_checkpoint": ["--load", tmp / "missing.t7", *common],
        "limit_zero": ["--load", ckpt, "--model", "R32_Digits", "--device", "cpu", "--limit", 0],
        "log_dir_a_file": ["--load", ckpt, *common, "--log_dir", sweep],
        "out_over_a_checkpoint": ["--load", ckpt, *common, "--out", taken],
    }
    results = {name: run_main(visualize_script, *args, cwd=tmp) for name, args in cases.items()}
    return {"results": results, "tmp": tmp, "ckpt": ckpt}


@pytest.fixture(scope="module")
def default_run(runs):
    result = runs["results"]["default_out"]
    assert result.returncode == 0, result.stderr
    out = runs["ckpt"].parent / "figures"
    return {"out": out, "json": json.loads((out / "policies.json").read_text()), "result": result}


@pytest.fixture(scope="module")
def sweep_run(runs):
    result = runs["results"]["sweep"]
    assert result.returncode == 0, result.stderr
    out = runs["tmp"] / "swept"
    return {"out": out, "json": json.loads((out / "policies.json").read_text()),
            "log_dir": runs["tmp"] / "swept_log"}


# --------------------------------------------------------------------------
# the figures
# --------------------------------------------------------------------------
def test_four_pngs_go_to_figures_beside_the_checkpoint(default_run):
    for name in FOUR_PNGS:
        assert_legible_png(default_run["out"] / name)
    assert not (default_run["out"] / "tradeoff.png").exists()


def test_a_constant_agent_draws_exactly_its_one_policy(default_run):
    figures = default_run["json"]
    assert figures["images"] == LIMIT
    assert figures["unique_policies"] == 1
    assert len(figures["policies"]) == 1
    assert figures["policies"][0]["policy"] == KEEP_STRING
    assert figures["policies"][0]["count"] == LIMIT
    assert 0.0 <= figures["policies"][0]["accuracy"] <= 1.0


def test_keep_rates_are_the_constant_policy(default_run):
    assert default_run["json"]["keep_rate"] == [1.0 if k else 0.0 for k in KEEP]
    assert default_run["json"]["block_usage"] == sum(KEEP)


def test_policies_json_lists_the_pngs_written(default_run):
    assert sorted(default_run["json"]["files"]) == sorted(FOUR_PNGS)


def test_figures_go_to_tensorboard_in_the_runs_log_folder(default_run, runs):
    log = runs["ckpt"].parent / "log"
    assert any(p.name.startswith("events.out.tfevents") for p in log.iterdir())


def test_a_sweep_adds_the_tradeoff_figure(sweep_run):
    for name in [*FOUR_PNGS, "tradeoff.png"]:
        assert_legible_png(sweep_run["out"] / name)
    assert sorted(sweep_run["json"]["files"]) == sorted([*FOUR_PNGS, "tradeoff.png"])
    assert any(p.name.startswith("events.out.tfevents") for p in sweep_run["log_dir"].iterdir())


# --------------------------------------------------------------------------
# the plotting functions (utils.plots), called directly
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plots():
    import utils.plots as module

    return module


def test_tradeoff_line_runs_through_the_penalties_in_order_of_flops(plots):
    fig = plots.tradeoff_figure(SWEEP["full"], SWEEP["runs"])
    try:
        lines = [line for line in fig.axes[0].get_lines() if len(line.get_xdata()) > 1]
        assert len(lines) == 1
        xs = [float(x) for x in lines[0].get_xdata()]
        assert xs == sorted(run["flops"] for run in SWEEP["runs"])
        by_flops = sorted(SWEEP["runs"], key=lambda run: run["flops"])
        assert [float(y) for y in lines[0].get_ydata()] == [run["accuracy"] for run in by_flops]
        labels = {text.get_text() for text in fig.axes[0].texts}
        assert {"γ=-1", "γ=-5", "γ=-10"} <= labels
    finally:
        plots.close_figure(fig)


def test_tradeoff_marks_the_full_resnet_apart_from_the_line(plots):
    fig = plots.tradeoff_figure(SWEEP["full"], SWEEP["runs"])
    try:
        (points,) = fig.axes[0].collections
        assert points.get_offsets().tolist() == [[SWEEP["full"]["full_resnet_flops"], SWEEP["full"]["accuracy"]]]
    finally:
        plots.close_figure(fig)


@pytest.mark.parametrize("count", [1, 3])
def test_red_frames_surround_the_misclassified_images_and_the_view_starts_at_the_first(plots, count):
    images = [np.full((6, 5), 0.1 * (j + 1), dtype=np.float32) for j in range(count)]  # one grey level each
    wrong = [j == count - 1 for j in range(count)]
    row = {"policy": "110", "count": count, "accuracy": 0.5, "images": images, "wrong": wrong}
    fig = plots.policy_rows_figure([row], [3], total_images=10, per_policy=4)
    try:
        ax = next(a for a in fig.axes if a.get_images())
        shown = ax.get_images()[0].get_array()
        (frame,) = ax.patches
        left, top = round(frame.get_x() + 0.5), round(frame.get_y() + 0.5)
        assert (frame.get_width(), frame.get_height()) == (5, 6)
        framed = shown[top: top + 6, left: left + 5]
        assert framed.shape[:2] == (6, 5) and np.allclose(framed, 0.1 * count)  # the last image, whole
        first_left, first_top = round(ax.get_xlim()[0] + 0.5), round(ax.get_ylim()[1] + 0.5)
        first = shown[first_top: first_top + 6, first_left: first_left + 5]
        assert first.shape[:2] == (6, 5) and np.allclose(first, 0.1)
        assert ax.get_xlim()[1] - ax.get_xlim()[0] == 4 * 5 + 3 * 2  # four images and the gaps between
    finally:
        plots.close_figure(fig)


def test_policies_are_counted_most_frequent_first_with_their_accuracy():
    policies = torch.tensor([[1, 0, 1], [1, 1, 1], [1, 0, 1], [0, 0, 1], [1, 1, 1], [1, 0, 1]], dtype=torch.int8)
    correct = torch.tensor([True, False, False, True, True, True])
    summary = visualize_script.summarize_policies({"policies": policies, "correct": correct})
    assert [(e["policy"], e["count"], e["accuracy"]) for e in summary["table"]] == [
        ("101", 3, 2 / 3), ("111", 2, 1 / 2), ("001", 1, 1.0)]
    assert summary["keep_rate"] == [5 / 6, 2 / 6, 1.0]


def test_display_image_undoes_the_r32_c10_normalisation(plots):
    cfg = get_config("R32_C10")
    gen = torch.Generator().manual_seed(0)
    raw = torch.rand(3, 32, 32, generator=gen)
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in cfg.normalize)
    shown = plots.display_image((raw - mean) / std, cfg.normalize)
    assert shown.shape == (32, 32, 3)
    assert np.allclose(shown, raw.permute(1, 2, 0).numpy(), atol=1e-6)


def test_display_image_shows_equal_channels_as_grey(plots):
    grey = torch.rand(1, 32, 32).repeat(3, 1, 1)
    assert plots.display_image(grey, None).shape == (32, 32)


# --------------------------------------------------------------------------
# bad inputs: one line on stderr, exit status 2, no traceback
# --------------------------------------------------------------------------
@pytest.mark.parametrize("case,named", [
    ("missing_sweep", ["nope.json"]),  # the file
    ("malformed_sweep", ["malformed.json"]),
    ("sweep_without_flops", ["flops"]),  # the field
    ("wrong_model", ["54", "15"]),  # an R110 agent with --model R32_Digits: both block counts
    ("missing_checkpoint", ["missing.t7"]),
    ("limit_zero", ["--limit"]),
    ("log_dir_a_file", ["--log_dir", "sweep.json", "is a file"]),
    ("out_over_a_checkpoint", ["--out", "policies.json", "checkpoint", "not a JSON file"]),
])
def test_bad_input_is_one_line_naming_what_is_wrong(runs, case, named):
    line = assert_one_line_error(runs["results"][case])
    for word in named:
        assert word in line, (word, line)


def test_no_output_replaces_a_file_of_another_kind(runs):
    taken = runs["tmp"] / "taken"
    assert [p.name for p in taken.iterdir()] == ["policies.json"]
    assert (taken / "policies.json").read_bytes() == runs["ckpt"].read_bytes()
    assert json.loads((runs["tmp"] / "sweep.json").read_text()) == SWEEP


def test_the_script_itself_answers_bad_input_in_one_line(tmp_path):
    result = subprocess.run(visualize_command("--model", "R32_Digits", "--load", tmp_path / "missing.t7"),
                            cwd=tmp_path, env=script_env(), capture_output=True, text=True, timeout=300)
    assert "missing.t7" in assert_one_line_error(result)
