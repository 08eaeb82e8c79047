"""A run writes in the folder given on the command line and nowhere else: a
copied or moved run resumes where it is, another script's run is refused,
``--restart`` moves nothing before every check has passed, and a refused run
leaves its folder (lock file included) as it found it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import cl_training
import finetune
from conftest import assert_one_line_error, cifar_folder, run_main
from models import build_agent, get_config
from utils.pipeline import load_script

pretrain = load_script("pretrain")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return cifar_folder(tmp_path_factory.mktemp("run_folder"), n_train=2, n_test=4, seed=2)


def tiny(folder: Path, script, *flags):
    return run_main(script, "--model", "R32_C10", "--data_dir", "data", "--device", "cpu", "--workers", "0",
                    "--batch_size", "5", "--seed", "0", "--base", "base.t7", *flags, cwd=folder)


def base_run(folder: Path, *flags):
    return run_main(pretrain, "--model", "R32_C10", "--data_dir", "data", "--device", "cpu", "--workers", "0",
                    "--batch_size", "5", "--seed", "0", "--milestones", "2", *flags, cwd=folder)


def everything(path: Path) -> dict:
    """Every file under ``path``, lock files included, and its bytes."""
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(Path(path).rglob("*")) if p.is_file()}


def outside(folder: Path, inside: Path) -> dict:
    return {k: v for k, v in everything(folder).items() if not (folder / k).is_relative_to(inside)}


def ran(result) -> None:
    assert result.returncode == 0, result.stderr[-2000:]


# --------------------------------------------------------------------------
# a copied or moved run resumes where it is
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    """40 images: 5 batches of 8 (as the kill-and-resume tests train)."""
    return cifar_folder(tmp_path_factory.mktemp("copied"), n_train=8, n_test=8, seed=3)


@pytest.mark.parametrize("data", [[], ["--device_data"]], ids=["loader", "device_data"])
@pytest.mark.parametrize("script", [cl_training, finetune], ids=["cl_training", "finetune"])
def test_a_copied_run_resumes_in_its_new_folder_and_ends_as_the_uninterrupted_run(batches, script, data):
    name, folder = script.__name__ + "".join(data), batches
    ran(tiny(folder, script, "--max_epochs", "2", "--test_every", "1", "--batch_size", "8",
             "--cv_dir", f"cv/{name}_whole", *data))
    whole, copy = folder / "cv" / f"{name}_whole", folder / "elsewhere" / f"{name}_copy"
    shutil.copytree(whole, copy)
    next(copy.glob("ckpt_E_2_*.t7")).unlink()  # the newest checkpoint lost, last.t7 cut: a run killed in epoch 2
    (copy / "last.t7").write_bytes(b"")
    before = outside(folder, copy)
    resumed = tiny(folder, script, "--resume", "--cv_dir", copy, "--batch_size", "8")
    ran(resumed)
    assert "after epoch 1" in resumed.stdout
    assert outside(folder, copy) == before  # the original folder untouched, byte for byte
    a, b = (torch.load(f / "last.t7", weights_only=True) for f in (whole, copy))
    assert b["epoch"] == 2 and b["args"]["cv_dir"] == str(copy)
    assert b["args"]["device_data"] is bool(data)
    for part in ("agent", "resnet") if script is finetune else ("agent",):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert len(list(copy.glob("ckpt_E_2_*.t7"))) == 1 and f"cv_dir: {copy}\n" in (copy / "args.txt").read_text()
    assert all(p.stat().st_size > 0 for p in copy.rglob("*") if p.is_file() and p.name != ".run.lock")


def test_a_moved_base_run_resumes_and_saves_its_base_where_it_is(folder):
    ran(base_run(folder, "--epochs", "1", "--cv_dir", "cv/base_origin"))
    origin, moved = folder / "cv" / "base_origin", folder / "moved" / "base"
    moved.parent.mkdir()
    origin.rename(moved)  # to another disk: the recorded folder is gone
    ran(base_run(folder, "--resume", "--cv_dir", moved, "--epochs", "2"))
    assert not origin.exists()
    assert len(list(moved.glob("pk_E_2_A_*.t7"))) == 1 and torch.load(moved / "last.t7")["epoch"] == 2


# --------------------------------------------------------------------------
# another script's run
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(folder):
    ran(tiny(folder, cl_training, "--max_epochs", "0", "--cv_dir", "cv/kind_cl"))
    ran(tiny(folder, finetune, "--max_epochs", "0", "--cv_dir", "cv/kind_ft"))
    ran(base_run(folder, "--epochs", "1", "--cv_dir", "cv/kind_base"))
    return {"cl_training.py": "cv/kind_cl", "finetune.py": "cv/kind_ft", "pretrain.py": "cv/kind_base"}


@pytest.mark.parametrize("script,other", [(pretrain, "finetune.py"), (finetune, "cl_training.py"),
                                          (cl_training, "finetune.py"), (finetune, "pretrain.py"),
                                          (pretrain, "cl_training.py")])
def test_another_scripts_run_is_refused_in_one_line_naming_both(folder, runs, script, other):
    cv_dir = folder / runs[other]
    before = everything(cv_dir)
    if script is pretrain:
        result = base_run(folder, "--resume", "--cv_dir", runs[other])
    else:
        result = tiny(folder, script, "--resume", "--cv_dir", runs[other])
    line = assert_one_line_error(result)
    assert other in line and Path(script.__file__).name in line, line
    assert everything(cv_dir) == before


# --------------------------------------------------------------------------
# --restart checks every file before it moves anything; a refusal changes nothing
# --------------------------------------------------------------------------
def damaged_files(folder: Path) -> dict:
    ckpt = next((folder / "cv" / "kept_run").glob("ckpt_E_0_*.t7")).read_bytes()
    (folder / "cut.t7").write_bytes(ckpt[: len(ckpt) // 2])
    base = torch.load(folder / "base.t7", weights_only=True)
    base["state_dict"]["conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(base, folder / "nan_base.t7")
    torch.save({"agent": build_agent(get_config("R110_C10")).state_dict()}, folder / "other_config.t7")
    base_bytes = (folder / "base.t7").read_bytes()
    (folder / "cut_base.t7").write_bytes(base_bytes[: len(base_bytes) // 2])
    return {"cut base": ["--base", "cut_base.t7"], "nan base": ["--base", "nan_base.t7"],
            "other pretrained": ["--pretrained", "other_config.t7"], "cut load": ["--load", "cut.t7"]}


def test_restart_moves_nothing_when_a_file_it_would_read_is_bad(folder):
    ran(tiny(folder, finetune, "--max_epochs", "0", "--cv_dir", "cv/kept_run"))
    run_folder = folder / "cv" / "kept_run"
    (run_folder / ".run.lock").write_text("424242\n")  # a lock left by a process long gone
    damaged = damaged_files(folder)
    before = everything(folder)
    for case, flags in damaged.items():
        result = tiny(folder, finetune, "--restart", "--cv_dir", "cv/kept_run", "--max_epochs", "0", *flags)
        assert_one_line_error(result)
        assert everything(folder) == before, case
    assert not list(run_folder.glob("earlier-*"))


def test_a_refused_run_neither_creates_nor_rewrites_the_lock_nor_leaves_folders(folder):
    ran(tiny(folder, cl_training, "--max_epochs", "0", "--cv_dir", "cv/held"))
    (folder / "cv" / "held" / ".run.lock").write_text("424242\n")
    (folder / "notes.txt").write_text("not a network\n")
    before = everything(folder)
    assert_one_line_error(tiny(folder, cl_training, "--max_epochs", "0", "--cv_dir", "cv/held"))
    for script in (cl_training, finetune):
        line = assert_one_line_error(run_main(script, "--model", "R32_C10", "--data_dir", "data", "--device", "cpu",
                                              "--base", "notes.txt", "--cv_dir", "cv/new/deeper", cwd=folder))
        assert "notes.txt" in line
    assert everything(folder) == before
    assert not (folder / "cv" / "new").exists()


def test_resuming_a_fixed_policy_run_checks_k_against_its_own_model(folder):
    ran(tiny(folder, finetune, "--max_epochs", "0", "--policy", "firstk", "--k", "7", "--cv_dir", "cv/firstk"))
    again = tiny(folder, finetune, "--resume", "--cv_dir", "cv/firstk", "--k", "7", "--max_epochs", "1")
    ran(again)
    wrong = assert_one_line_error(tiny(folder, finetune, "--resume", "--cv_dir", "cv/firstk", "--k", "70"))
    assert "54" not in wrong and "--k" in wrong
