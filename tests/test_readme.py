"""The README's and the docs pages' commands stay true: every script command they
show parses with that script's own flags, every relative link leads to a file, and
the set-up commands are the Makefile's and CI's."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from conftest import ROOT
from models import CONFIGS
from utils.pipeline import load_script

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README = PAGES[0].read_text()


def shown_commands(pattern: str) -> list:
    """Each line of a page that starts with ``pattern``, without its ``  # comment``,
    as a test parameter named after its page and line."""
    found = []
    for page in PAGES:
        for number, line in enumerate(page.read_text().splitlines(), start=1):
            if re.match(pattern, line):
                found.append(pytest.param(line.split("  #")[0].strip(), id=f"{page.relative_to(ROOT)}:{number}"))
    return found


COMMANDS = shown_commands(r"python \w+\.py ")
TORCHRUN = shown_commands(r"torchrun --")


def test_the_pages_show_the_commands_the_tests_below_check():
    # an empty list would make the parametrized tests below pass without checking anything
    assert [p.id.split(":")[0] for p in TORCHRUN] == ["docs/gpus.md", "docs/gpus.md"]
    assert len(COMMANDS) == 18 and {p.id.split(":")[0] for p in COMMANDS} == {"README.md"}


def test_the_readme_shows_every_script_once_at_least():
    shown = {shlex.split(p.values[0])[1] for p in COMMANDS if p.id.startswith("README.md:")}
    assert shown == {"pretrain.py", "cl_training.py", "finetune.py", "test.py", "sweep.py", "visualize.py",
                     "convert_base.py", "reproduce.py"}


@pytest.mark.parametrize("command", COMMANDS)
def test_shown_command_parses_with_the_scripts_flags(command):
    argv = shlex.split(command)
    module = load_script(argv[1])
    args = module.get_args_parser().parse_args(argv[2:])  # an unknown flag would exit 2
    if "model" in vars(args):  # convert_base.py takes a file, not a configuration
        assert args.model in CONFIGS


@pytest.mark.parametrize("command", TORCHRUN)
def test_shown_torchrun_command_parses_with_the_scripts_flags(command):
    argv = shlex.split(command)
    at = next(i for i, word in enumerate(argv) if word.endswith(".py"))
    args = load_script(argv[at]).get_args_parser().parse_args(argv[at + 1:])
    assert args.model in CONFIGS


def relative_links(page: Path) -> list[str]:
    """The targets of a page's Markdown links and images that are not web
    addresses or anchors within the page, without their ``#anchor``."""
    targets = re.findall(r"\]\(([^)\s]+)\)", page.read_text())
    return [t.split("#")[0] for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:|#", t)]


def test_every_relative_link_leads_to_a_file():
    links = {page: relative_links(page) for page in PAGES}
    assert all(links.values()), "a page without links: is the link pattern still right?"
    broken = [f"{page.relative_to(ROOT)}: {target}" for page, targets in links.items() for target in targets
              if not (page.parent / target).is_file()]
    assert broken == []
    assert "docs/demo/policies.png" in links[PAGES[0]]  # the demo's figures, shown in the README


def test_the_two_set_up_commands_are_make_targets_and_ci_runs_the_tests():
    setup = re.search(r"## Set-up: two commands\n\n```bash\n(.*?)```", README, re.S)[1]
    assert [line.split()[:2] for line in setup.strip().splitlines()] == [["make", "demo"], ["make", "test"]]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo: .*\n\t\$\(PY\) demo\.py$", makefile, re.M)
    assert re.search(r"^test: .*\n\t\$\(PY\) -m pytest", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
