"""Two processes under torchrun (gloo, CPU) train as one: the same parameters on
both, one set of checkpoints and logs, every image counted once, and the
test-set figures of one process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from conftest import cifar_folder, run_main, script_env
from evaluation import evaluate
from models import build_agent, build_resnet, get_config
from utils.bases import load_base
from utils.checkpoints import load_blockdrop_checkpoint
from utils.data import WithIndex, get_datasets
from utils.pipeline import load_script

WRAPPER = Path(__file__).resolve().parent / "distributed_run.py"
TRAIN_IMAGES, TEST_IMAGES = 25, 9  # neither divides among 2 processes


def torchrun(out: Path, script: str, *flags: str, cwd: Path) -> subprocess.CompletedProcess:
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(WRAPPER), str(out), script, *map(str, flags)]
    result = subprocess.run(command, cwd=cwd, env=script_env(OMP_NUM_THREADS="1"), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = cifar_folder(tmp_path_factory.mktemp("ddp"), n_train=5, n_test=TEST_IMAGES, seed=4)
    common = ["--model", "R32_C10", "--data_dir", "data", "--device", "cpu", "--workers", "0", "--batch_size", "4",
              "--seed", "0", "--max_epochs", "0"]
    cl = torchrun(tmp / "ranks_cl", "cl_training.py", *common, "--base", "base.t7", "--cv_dir", "cv/cl", cwd=tmp)
    # finetuning from an agent that keeps blocks 0-4, drops 5-9 and flips a coin for 10-14 (alpha 1:
    # the samples follow it), two images per process: some blocks run on one process and on no
    # image of the other's batch, and blocks 5-9 on none at all
    ckpt = torch.load(next((tmp / "cv" / "cl").glob("ckpt_E_0_*.t7")), weights_only=True)
    ckpt["agent"]["logit.weight"].zero_()
    ckpt["agent"]["logit.bias"].copy_(torch.tensor([30.0] * 5 + [-30.0] * 5 + [0.0] * 5))
    torch.save(ckpt, tmp / "biased.t7")
    common[common.index("--batch_size") + 1] = "2"
    ft = torchrun(tmp / "ranks_ft", "finetune.py", *common, "--pretrained", "biased.t7", "--lr", "1e-3",
                  "--alpha", "1.0", "--cv_dir", "cv/ft", cwd=tmp)
    return {"tmp": tmp, "cl": cl, "ft": ft}


def one_process_evaluation(ckpt: Path, decided: int, tmp: Path) -> dict:
    cfg = get_config("R32_C10")
    agent, resnet = build_agent(cfg), build_resnet(cfg)
    obj = load_blockdrop_checkpoint(ckpt, cfg.name, agent, resnet)
    if not obj["has_resnet"]:
        load_base(resnet, tmp / "base.t7", cfg.name)
    _, testset = get_datasets(cfg, tmp / "data")
    loader = DataLoader(WithIndex(testset), batch_size=3)
    return evaluate(agent, resnet, loader, torch.device("cpu"), decided, obj["args"]["penalty"])


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["cl", "ft"])
def test_two_processes_end_with_the_same_parameters(runs, phase):
    ranks = [torch.load(runs["tmp"] / f"ranks_{phase}" / f"rank{r}.t7", weights_only=True) for r in (0, 1)]
    for part in ("agent", "resnet"):
        for key, value in ranks[0][part].items():
            assert torch.equal(value, ranks[1][part][key]), (part, key)
    if phase == "ft":  # the batches DDP had to handle: blocks kept on one process, on no image of the other
        steps = list(zip(ranks[0]["policies"], ranks[1]["policies"]))
        one_sided = [t for a, b in steps for t in range(10, 15) if (a[:, t].sum() == 0) != (b[:, t].sum() == 0)]
        assert one_sided and all(a[:, 5:10].sum() == b[:, 5:10].sum() == 0 for a, b in steps)
    saved = torch.load(runs["tmp"] / "cv" / phase / "last.t7", weights_only=True)
    assert all(torch.equal(saved["agent"][k], v) for k, v in ranks[0]["agent"].items())  # no module. prefix


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["cl", "ft"])
def test_one_set_of_files_and_log_lines_with_every_image_counted_once(runs, phase):
    folder = runs["tmp"] / "cv" / phase
    assert len(list(folder.glob("ckpt_E_*.t7"))) == 1 and (folder / "last.t7").is_file()
    assert len(list((folder / "log").glob("events.out.tfevents.*"))) == 1
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [(r["split"], r["epoch"], r["images"]) for r in rows] == [("train", 0, TRAIN_IMAGES), ("test", 0, TEST_IMAGES)]
    stdout = runs[phase].stdout
    assert sum(line.startswith("E: 0 |") for line in stdout.splitlines()) == 1
    assert "processes: 2" in (folder / "args.txt").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["cl", "ft"])
def test_the_sharded_evaluation_equals_one_processs(runs, phase):
    ckpt = next((runs["tmp"] / "cv" / phase).glob("ckpt_E_0_*.t7"))
    decided = 1 if phase == "cl" else 15  # the curriculum's epoch 0 decides the last block only
    one = one_process_evaluation(ckpt, decided, runs["tmp"])
    test_row = json.loads((runs["tmp"] / "cv" / phase / "metrics.jsonl").read_text().splitlines()[1])
    for key in ("acc", "reward", "blocks", "blocks_std", "unique", "images"):
        assert test_row[key] == one[key], key
    if phase == "ft":  # and test.py on the same checkpoint
        profile = run_main(load_script("test"), "--model", "R32_C10", "--load", ckpt, "--data_dir", "data",
                           "--device", "cpu", "--time_images", "0", "--json", "ft.json", cwd=runs["tmp"])
        assert profile.returncode == 0, profile.stderr
        figures = json.loads((runs["tmp"] / "ft.json").read_text())
        assert figures["accuracy"] == pytest.approx(one["acc"]) and figures["unique_policies"] == one["unique"]
        assert figures["block_usage"] == pytest.approx(one["blocks"])
