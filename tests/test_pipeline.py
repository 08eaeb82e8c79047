"""``utils.pipeline``: a script runs another only as its command, and a stored
result holds only for the settings (and starting files) that made it."""

from __future__ import annotations

import ast
import hashlib
import json

import pytest

import utils.pipeline
from conftest import ROOT
from utils import BlockDropError
from utils.pipeline import cached, content_sha256, load_script, run_script, run_training

SCRIPTS = {path.stem for path in ROOT.glob("*.py") if 'if __name__ == "__main__":' in path.read_text()}


def test_run_script_prints_the_command_then_runs_the_scripts_main_on_its_flags(capsys, monkeypatch):
    sweep = load_script("sweep.py")
    assert sweep is load_script("sweep")  # one module, however it is named
    monkeypatch.setattr(sweep, "main", lambda args: {"parsed": args})
    result = run_script("sweep.py", ["--pretrained", "cl.t7", "--penalties", -1, -5])
    assert capsys.readouterr().out == "\n$ python sweep.py --pretrained cl.t7 --penalties -1 -5\n"
    assert result["parsed"].penalties == [-1.0, -5.0] and result["parsed"].model == "R32_Digits"


def test_run_script_answers_a_bad_flag_as_the_command_line_does(capsys):
    with pytest.raises(SystemExit) as exit_:
        run_script("sweep.py", ["--model", "R32_Digits"])  # --pretrained is required
    assert exit_.value.code == 2 and "--pretrained" in capsys.readouterr().err


def test_content_sha256_is_of_the_content_and_a_missing_file_is_named(tmp_path):
    a, b = tmp_path / "a.t7", tmp_path / "b.t7"
    a.write_bytes(b"weights")
    b.write_bytes(b"weights")
    assert content_sha256(a) == content_sha256(b) == hashlib.sha256(b"weights").hexdigest()
    assert content_sha256(None) is None
    with pytest.raises(BlockDropError, match="gone.t7"):
        content_sha256(tmp_path / "gone.t7")


def test_cached_computes_once_per_settings(tmp_path):
    record, calls = tmp_path / "run.json", []

    def compute():
        calls.append(1)
        return {"accuracy": 0.5 * len(calls)}

    assert cached(record, {"lr": 1}, compute) == {"accuracy": 0.5}
    assert cached(record, {"lr": 1}, compute) == {"accuracy": 0.5}
    assert cached(record, {"lr": 2}, compute) == {"accuracy": 1.0}
    assert len(calls) == 2
    stored = json.loads(record.read_text())
    assert {k: stored[k] for k in ("settings", "report")} == {"settings": {"lr": 2}, "report": {"accuracy": 1.0}}
    assert 0 <= stored["seconds"] < 60  # how long the computation took


DAMAGED = {"empty": b"", "cut": b'{"settings": {"lr": 1}, "rep', "not utf-8": b"\xff\xfe{}",
           "a list": b"[1, 2]", "no report": b'{"settings": {"lr": 1}}'}


@pytest.mark.parametrize("content", DAMAGED.values(), ids=DAMAGED.keys())
def test_a_damaged_record_runs_the_step_again(tmp_path, monkeypatch, content):
    record, calls = tmp_path / "full.json", []
    record.write_bytes(content)
    assert cached(record, {"lr": 1}, lambda: calls.append(1) or {"accuracy": 0.5}) == {"accuracy": 0.5}
    assert calls == [1] and json.loads(record.read_text())["report"] == {"accuracy": 0.5}

    folder = tmp_path / "step"
    folder.mkdir()
    for name in ("step.json", "started.json"):
        (folder / name).write_bytes(content.replace(b"report", b"result"))
    monkeypatch.setattr(utils.pipeline, "run_script", lambda script, argv: calls.append(argv) or {"acc": 0.25})
    assert run_training(folder, "finetune.py", ["--lr", 1], {"lr": 1}) == {"acc": 0.25}
    assert calls[1] == ["--lr", "1"]  # no run files there: run afresh, with no --resume or --restart
    assert run_training(folder, "finetune.py", ["--lr", 1], {"lr": 1}) == {"acc": 0.25} and len(calls) == 2


def test_no_module_of_the_project_imports_a_script():
    assert {"demo", "sweep", "finetune", "test", "visualize"} <= SCRIPTS and "engine" not in SCRIPTS
    sources = [p for p in ROOT.rglob("*.py") if not {".venv", "tests"} & set(p.relative_to(ROOT).parts)]
    offenders = []
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in SCRIPTS]
    assert offenders == []
