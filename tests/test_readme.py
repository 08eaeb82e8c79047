"""The README's commands stay true: every script command it shows parses with that
script's own flags, and the set-up commands are the Makefile's and CI's."""

from __future__ import annotations

import re
import shlex

import pytest

from conftest import ROOT
from models import CONFIGS
from utils import load_script

README = (ROOT / "README.md").read_text()
COMMANDS = [line.split("  #")[0].strip() for line in README.splitlines()
            if re.match(r"python \w+\.py ", line)]


def test_the_readme_shows_every_script_once_at_least():
    shown = {shlex.split(c)[1] for c in COMMANDS}
    assert shown == {"pretrain.py", "cl_training.py", "finetune.py", "test.py", "sweep.py", "visualize.py",
                     "convert_base.py"}


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses_with_the_scripts_flags(command):
    argv = shlex.split(command)
    module = load_script(argv[1].removesuffix(".py"))
    args = module.get_args_parser().parse_args(argv[2:])  # an unknown flag would exit 2
    if "model" in vars(args):  # convert_base.py takes a file, not a configuration
        assert args.model in CONFIGS


TORCHRUN = [line.strip() for line in README.splitlines() if line.startswith("torchrun --")]


@pytest.mark.parametrize("command", TORCHRUN)
def test_readme_torchrun_command_parses_with_the_scripts_flags(command):
    argv = shlex.split(command)
    at = next(i for i, word in enumerate(argv) if word.endswith(".py"))
    module = load_script(argv[at].removesuffix(".py"))
    args = module.get_args_parser().parse_args(argv[at + 1:])
    assert args.model in CONFIGS and len(TORCHRUN) == 2


def test_the_two_set_up_commands_are_make_targets_and_ci_runs_the_tests():
    setup = re.search(r"## Set-up: two commands\n\n```bash\n(.*?)```", README, re.S)[1]
    assert [line.split()[:2] for line in setup.strip().splitlines()] == [["make", "demo"], ["make", "test"]]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo: .*\n\t\$\(PY\) demo\.py$", makefile, re.M)
    assert re.search(r"^test: .*\n\t\$\(PY\) -m pytest", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
