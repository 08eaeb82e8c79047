"""The code's shape: what the method's modules load, what the generic loop
imports, and the size of files and functions."""

from __future__ import annotations

import ast
import subprocess
import sys

from conftest import ROOT

SOURCES = [p for p in ROOT.rglob("*.py") if not {".venv", "data", "cv"} & set(p.relative_to(ROOT).parts)]


def project_imports(path) -> set[str]:
    """The top-level names a file imports (relative imports as their package's)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add("." if node.level else node.module.split(".")[0])
    return names


def test_importing_the_method_loads_no_data_set_module_and_no_progress_bar_of_its_own():
    code = ("import sys, torch; before = set(sys.modules); import rl; "
            "print(sorted(m for m in set(sys.modules) - before if m.startswith(('torchvision', 'tqdm'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"  # torch itself loads tqdm (torch.hub); the project adds nothing


def test_the_engine_is_generic_and_the_errors_module_is_a_leaf():
    assert not {"rl", "models", "training", "evaluation"} & project_imports(ROOT / "engine.py")
    assert not {"utils", "models", ".", "rl", "engine"} & project_imports(ROOT / "utils" / "errors.py")


def test_no_file_passes_450_lines_and_no_function_60():
    long_files = [f"{p.relative_to(ROOT)}: {n}" for p in SOURCES if (n := len(p.read_text().splitlines())) > 450]
    long_functions = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert long_files == [] and long_functions == []
