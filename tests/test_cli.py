"""The command line: every script's --help shows each default once, flags are
checked by argparse, and a script answers bad input in one line."""

from __future__ import annotations

import re

import pytest

from conftest import assert_one_line_error, run_main
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
