"""Inputs and accidents that end in one line, exit status 2, and nothing on disk
changed: a folder in use by another run, a write that fails, a name that is not
UTF-8, a file of another configuration, a finished run resumed, flags checked
before an earlier run is set aside, the sweep's own list, crafted files, and
data that does not fit."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import cl_training
import finetune
import sweep
import visualize
from conftest import (
    CIFAR10_FOLDER,
    ROOT,
    assert_one_line_error,
    cifar_folder,
    images_to_rows,
    run_main,
    script_env,
    write_cifar10,
    write_cifar_batch,
)
from models import build_agent, build_resnet, get_config, to_standard_keys
from utils.pipeline import load_script

INTERRUPT = Path(__file__).resolve().parent / "interrupt.py"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return cifar_folder(tmp_path_factory.mktemp("refusals"), n_train=2, n_test=4, seed=1)


def tiny(folder: Path, script, *flags):
    return run_main(script, "--model", "R32_C10", "--data_dir", "data", "--device", "cpu", "--workers", "0",
                    "--batch_size", "5", "--seed", "0", "--base", "base.t7", *flags, cwd=folder)


def files_of(path: Path) -> dict:
    """A folder's files and their bytes (its lock file names whichever process held it last)."""
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != ".run.lock"}


# --------------------------------------------------------------------------
# one run per folder
# --------------------------------------------------------------------------
def test_a_second_run_in_a_folder_in_use_is_refused_naming_the_process(folder):
    marker = folder / "frozen"
    flags = ["--model", "R32_C10", "--data_dir", "data", "--device", "cpu", "--workers", "0", "--batch_size", "5",
             "--base", "base.t7", "--cv_dir", "cv/busy", "--max_epochs", "0"]
    first = subprocess.Popen([sys.executable, str(INTERRUPT), str(marker), "step:0:0", "cl_training.py", *flags],
                             cwd=folder, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert first.poll() is None and time.time() < deadline, first.stderr.read()[-2000:]
            time.sleep(0.05)
        before = files_of(folder / "cv" / "busy")
        for extra in ([], ["--restart"], ["--resume"]):
            line = assert_one_line_error(run_main(cl_training, *flags, *extra, cwd=folder))
            assert "in use by another run" in line and f"process {first.pid}" in line, line
        assert files_of(folder / "cv" / "busy") == before
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    # the killed run's lock went with its process; its first state is there to resume
    resumed = run_main(cl_training, "--resume", "--cv_dir", "cv/busy", "--device", "cpu", cwd=folder)
    assert resumed.returncode == 0, resumed.stderr
    assert "before its first epoch" in resumed.stdout
    rows = [json.loads(line) for line in (folder / "cv" / "busy" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["split"], r["epoch"]) for r in rows] == [("train", 0), ("test", 0)]


# --------------------------------------------------------------------------
# writes that fail
# --------------------------------------------------------------------------
def test_a_checkpoint_write_that_fails_is_one_line_and_keeps_the_last_good_state(folder, monkeypatch):
    assert tiny(folder, finetune, "--max_epochs", "0", "--cv_dir", "cv/write").returncode == 0
    before = files_of(folder / "cv" / "write")
    real = torch.save

    def full_disk(obj, f, *args, **kwargs):
        real(obj, f, *args, **kwargs)
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 6016 vs 5888")

    monkeypatch.setattr(torch, "save", full_disk)
    # epoch 1 of 0-2 is neither tested nor the last: its state goes to last.t7 alone
    line = assert_one_line_error(tiny(folder, finetune, "--resume", "--cv_dir", "cv/write", "--max_epochs", "2"))
    assert "last.t7: cannot be written" in line and "the earlier file is unchanged" in line, line
    after = files_of(folder / "cv" / "write")
    assert not [name for name in after if name.endswith(".tmp")]
    assert {k: v for k, v in after.items() if k.endswith(".t7")} == {k: v for k, v in before.items() if k.endswith(".t7")}


def test_a_file_size_limit_is_one_line_naming_the_limit(folder):
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    result = subprocess.run([sys.executable, str(ROOT / "cl_training.py"), "--model", "R32_C10", "--data_dir", "data",
                             "--device", "cpu", "--workers", "0", "--base", "base.t7", "--cv_dir", "cv/ulimit"],
                            cwd=folder, env=script_env(), capture_output=True, text=True, timeout=300, preexec_fn=limit)
    line = assert_one_line_error(result)
    assert "cannot be written" in line and "ulimit -f" in line, line
    assert not list((folder / "cv" / "ulimit").glob(".*.tmp"))


def test_an_output_name_that_is_not_utf8_is_refused_before_anything_is_made(folder):
    name = os.fsdecode(b"cv/not-utf8-\xff")
    for script, flags in ((cl_training, ["--cv_dir", name]), (load_script("test"), ["--json", name + ".json"])):
        line = assert_one_line_error(tiny(folder, script, *flags))
        assert "not valid UTF-8" in line and "\\xff" in line
    made = [os.fsencode(p) for p in folder.rglob("*")]
    assert not [p for p in made if b"\xff" in p]


# --------------------------------------------------------------------------
# files of another configuration
# --------------------------------------------------------------------------
def test_a_checkpoint_or_base_of_another_configuration_is_refused_though_its_shapes_fit(folder):
    agent = build_agent(get_config("R32_Digits")).state_dict()
    torch.save({"agent": agent, "epoch": 3, "args": {"model": "R32_Digits"}}, folder / "digits.t7")
    torch.save({"state_dict": to_standard_keys(build_resnet(get_config("R32_Digits")).state_dict()),
                "model": "R32_Digits"}, folder / "digits_base.t7")
    test = load_script("test")
    for script, flags in ((test, ["--load", "digits.t7"]), (finetune, ["--pretrained", "digits.t7", "--cv_dir", "cv/d"]),
                          (test, ["--base", "digits_base.t7"])):
        result = run_main(script, "--model", "R32_C10", "--data_dir", "data", "--device", "cpu", *flags, cwd=folder)
        line = assert_one_line_error(result)
        assert "was trained for R32_Digits, not R32_C10" in line, line
    authors = {k: v for k, v in torch.load(folder / "digits.t7", weights_only=True).items() if k != "args"}
    torch.save(authors, folder / "authors.t7")  # a file that records no configuration still loads
    loaded = run_main(test, "--model", "R32_C10", "--data_dir", "data", "--device", "cpu", "--load", "authors.t7",
                      "--base", "base.t7", "--time_images", "0", cwd=folder)
    assert loaded.returncode == 0, loaded.stderr


# --------------------------------------------------------------------------
# resuming and restarting
# --------------------------------------------------------------------------
def test_resuming_a_finished_run_says_so_and_rewrites_nothing(folder):
    assert tiny(folder, cl_training, "--max_epochs", "1", "--cv_dir", "cv/done").returncode == 0
    before = files_of(folder / "cv" / "done")
    for epochs in ("1", "0"):
        again = tiny(folder, cl_training, "--resume", "--cv_dir", "cv/done", "--max_epochs", epochs)
        assert again.returncode == 0 and "is complete" in again.stdout and "E: " not in again.stdout
        assert files_of(folder / "cv" / "done") == before


def test_restart_checks_every_flag_before_the_earlier_run_is_moved(folder):
    assert tiny(folder, cl_training, "--max_epochs", "0", "--cv_dir", "cv/kept").returncode == 0
    before = files_of(folder / "cv" / "kept")
    for flags, named in ((["--pretrained", "missing.t7"], "missing.t7"), (["--data_dir", "nowhere"], "nowhere")):
        result = tiny(folder, finetune, "--restart", "--cv_dir", "cv/kept", *flags)
        assert named in assert_one_line_error(result)
        assert files_of(folder / "cv" / "kept") == before


def test_an_output_path_never_replaces_a_checkpoint(folder):
    assert tiny(folder, cl_training, "--max_epochs", "0", "--cv_dir", "cv/profiled").returncode == 0
    before = files_of(folder / "cv" / "profiled")
    for target in ("last.t7", next(name for name in before if name.startswith("ckpt_E_0_"))):
        result = run_main(load_script("test"), "--model", "R32_C10", "--data_dir", "data", "--device", "cpu",
                          "--base", "base.t7", "--time_images", "0", "--json", f"cv/profiled/{target}", cwd=folder)
        line = assert_one_line_error(result)
        assert "--json" in line and target in line and "checkpoint" in line, line
    assert files_of(folder / "cv" / "profiled") == before
    again = folder / "cv" / "profiled" / "figures.json"
    for _ in range(2):  # its own output it replaces
        assert run_main(load_script("test"), "--model", "R32_C10", "--data_dir", "data", "--device", "cpu",
                        "--base", "base.t7", "--time_images", "0", "--json", again, cwd=folder).returncode == 0
    assert json.loads(again.read_text())["images"] == 4


def test_resume_of_a_folder_that_does_not_exist_makes_nothing(folder):
    result = tiny(folder, finetune, "--resume", "--cv_dir", "cv/never")
    assert "no run to resume" in assert_one_line_error(result)
    assert not (folder / "cv" / "never").exists()


# --------------------------------------------------------------------------
# the sweep's own list, crafted files
# --------------------------------------------------------------------------
@pytest.mark.parametrize("penalties,named", [(["nan"], "--penalties"), (["inf"], "--penalties"),
                                             (["-1", "-1.0000001"], "share a folder")])
def test_the_sweep_checks_its_own_penalties_first(folder, penalties, named):
    result = run_main(sweep, "--model", "R32_C10", "--pretrained", "x.t7", "--cv_dir", "cv/sweep", "--penalties",
                      *penalties, cwd=folder)
    assert named in assert_one_line_error(result)
    assert not (folder / "cv" / "sweep").exists()


class RunsCode:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "ran"))


def test_a_sweep_refused_for_a_base_that_is_no_network_leaves_no_folder(folder):
    (folder / "text_base.t7").write_text("not a network\n")
    assert tiny(folder, cl_training, "--max_epochs", "0", "--cv_dir", "cv/sweep_start").returncode == 0
    start = next((folder / "cv" / "sweep_start").glob("ckpt_E_0_*.t7"))
    result = run_main(sweep, "--model", "R32_C10", "--pretrained", start, "--base", "text_base.t7", "--device", "cpu",
                      "--cv_dir", "cv/text_sweep/deeper", "--data_dir", "data", cwd=folder)
    assert "text_base.t7" in assert_one_line_error(result)
    assert not (folder / "cv" / "text_sweep").exists()


def test_a_crafted_pickle_is_refused_in_one_line_before_anything_is_written(folder):
    marker = folder / "ran"
    evil = folder / "evil.t7"
    evil.write_bytes(pickle.dumps({"agent": RunsCode(marker)}, protocol=4))
    result = subprocess.run([sys.executable, str(ROOT / "test.py"), "--model", "R32_C10", "--data_dir", "data",
                             "--load", "evil.t7", "--device", "cpu"], cwd=folder, env=script_env(),
                            capture_output=True, text=True, timeout=300)
    assert "convert_base.py" in assert_one_line_error(result)  # the only line: no warning before it
    swept = run_main(sweep, "--model", "R32_C10", "--pretrained", "evil.t7", "--base", "base.t7",
                     "--cv_dir", "cv/evil_sweep", "--data_dir", "data", cwd=folder)
    assert "evil.t7" in assert_one_line_error(swept)
    assert not (folder / "cv" / "evil_sweep").exists() and not marker.exists()


@pytest.mark.parametrize("content,named", [("[" * 200_000, "RecursionError"),
                                           ('{"runs": [{"penalty": ' + "9" * 5001 + "}]}", "ValueError")])
def test_a_sweep_file_too_deep_or_with_a_huge_number_is_one_line(folder, content, named):
    (folder / "odd.json").write_text(content)
    result = run_main(visualize, "--model", "R32_C10", "--load", "x.t7", "--sweep", "odd.json", cwd=folder)
    line = assert_one_line_error(result)
    assert "odd.json" in line and named in line


# --------------------------------------------------------------------------
# data that does not fit
# --------------------------------------------------------------------------
def test_cifar_labels_out_of_range_are_refused_when_read_naming_the_file(tmp_path):
    cifar_folder(tmp_path, n_train=2, n_test=3, seed=0)
    bad = tmp_path / "data" / CIFAR10_FOLDER / "data_batch_4"
    images = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    write_cifar_batch(bad, images_to_rows(images), [3, 10])
    for script, flags in ((load_script("pretrain"), ["--cv_dir", "cv/p"]), (load_script("test"), ["--base", "base.t7"])):
        result = run_main(script, "--model", "R32_C10", "--data_dir", "data", "--device", "cpu", *flags,
                          cwd=tmp_path)
        line = assert_one_line_error(result)
        assert "data_batch_4" in line and "label 10" in line, line
    assert not (tmp_path / "cv").exists()


@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar_training_batches_without_images_are_an_empty_data_set(tmp_path, protocol):
    folder = tmp_path / "data" / CIFAR10_FOLDER
    write_cifar10(tmp_path / "data", n_train=2, n_test=3)
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        entry = {"batch_label": name, "data": np.zeros((0, 3072), dtype=np.uint8), "labels": []}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=protocol))
    result = run_main(load_script("pretrain"), "--model", "R32_C10", "--data_dir", "data", "--device", "cpu",
                      "--cv_dir", "cv/p", cwd=tmp_path)
    line = assert_one_line_error(result)
    assert "the data set is empty" in line and CIFAR10_FOLDER in line, line


@pytest.mark.parametrize("batch,labels,named", [
    ("data_batch_2", [3, 2**70], f"label {2**70}"),  # too large for any integer type
    ("data_batch_2", [0.5, 1.5], "label 0.5"),  # not whole numbers
    ("data_batch_2", [1.0, "cat"], "label 'cat'"),
    ("test_batch", [], "test batches (test_batch) hold no images"),  # found before the first epoch, not after it
], ids=["huge", "fractions", "a word", "empty test set"])
def test_cifar_labels_that_are_not_class_indices_and_an_empty_test_set_are_refused_first(tmp_path, batch, labels,
                                                                                        named):
    cifar_folder(tmp_path, n_train=2, n_test=3, seed=0)
    entry = {"batch_label": batch, "data": np.zeros((len(labels), 3072), dtype=np.uint8), "labels": labels}
    (tmp_path / "data" / CIFAR10_FOLDER / batch).write_bytes(pickle.dumps(entry, protocol=2))
    result = run_main(cl_training, "--model", "R32_C10", "--data_dir", "data", "--device", "cpu", "--workers", "0",
                      "--base", "base.t7", "--max_epochs", "1", "--cv_dir", "cv/labels", cwd=tmp_path)
    line = assert_one_line_error(result)
    assert named in line and batch in line, line
    assert "E: 0" not in result.stdout and not (tmp_path / "cv").exists()
