"""The command line: every script's --help shows each default once, flags are
checked by argparse, and a script answers bad input in one line."""

from __future__ import annotations

import re

import pytest

from conftest import assert_one_line_error, run_main
from utils.config import TrainConfig
from utils.pipeline import load_script

SCRIPTS = ["cl_training", "finetune", "test", "pretrain", "sweep", "visualize", "demo", "convert_base", "reproduce"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_shows_each_default_once(name):
    text = load_script(name).get_args_parser().format_help()
    options = re.split(r"\n  (?=-)", text)
    for option in options:
        assert option.count("(default") <= 1, option
    assert "(default: None)" not in text


@pytest.mark.parametrize("name,argv,named", [
    ("test", ["--limit", "0"], "--limit"),
    ("test", ["--workers", "-1"], "--workers"),
    ("pretrain", ["--epochs", "0"], "--epochs"),
    ("pretrain", ["--model", "R57_C10"], "R57_C10"),
    ("sweep", ["--pretrained", "x.t7", "--limit", "0"], "--limit"),
    ("visualize", ["--load", "x.t7", "--top", "0"], "--top"),
    ("demo", ["--cl_epochs", "-1"], "--cl_epochs"),
])
def test_flags_are_checked_before_any_work(tmp_path, name, argv, named):
    result = run_main(load_script(name), *argv, cwd=tmp_path)
    assert named in assert_one_line_error(result)
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("typed", ["-1e-7", "-1.00000001e-07", "-1E+2", "-.5e-3", "-2.", "-3"])
def test_a_negative_number_is_taken_in_any_form_a_user_types(typed):
    args = load_script("sweep").get_args_parser().parse_args(["--pretrained", "x.t7", "--penalties", "-1", typed])
    assert args.penalties == [-1.0, float(typed)]
    ft = load_script("finetune").get_args_parser().parse_args(["--penalty", typed])
    assert ft.penalty == float(typed)


def test_a_negative_infinity_is_read_as_a_number_and_refused_as_one(tmp_path):
    line = assert_one_line_error(run_main(load_script("finetune"), "--penalty", "-inf", cwd=tmp_path))
    assert "--penalty" in line and "finite" in line


@pytest.mark.parametrize("flag,value", [("--cl_step", "3"), ("--beta", "0.5")])
def test_finetune_has_no_curriculum_flags_as_the_original_had_none(tmp_path, flag, value):
    line = assert_one_line_error(run_main(load_script("finetune"), flag, value, cwd=tmp_path))
    assert flag in line and "unrecognized" in line
    assert list(tmp_path.iterdir()) == []  # nothing written
    assert load_script("cl_training").get_args_parser().parse_args([flag, value])


def test_args_txt_records_only_the_flags_of_the_script_that_ran():
    finetuning, curriculum = TrainConfig(joint=True).flags(), TrainConfig(joint=False).flags()
    assert not {"beta", "cl_step"} & finetuning.keys()
    assert {"pretrained", "per_image", "policy", "k"} <= finetuning.keys()
    assert {"beta", "cl_step"} <= curriculum.keys() and not {"pretrained", "policy"} & curriculum.keys()
