"""The training scripts as a user runs them: pretrain.py, cl_training.py,
finetune.py and test.py chained on CIFAR-layout files, their flags, --load,
seeds and learning-rate schedules (SPEC sections 4-6)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

import cl_training
import finetune
import pretrain
from conftest import ROOT, assert_one_line_error, run_main, script_env, write_cifar10
from models import build_agent, build_resnet, get_config
from rl import RLConfig, train_step
from training import Networks, build_networks, fit, make_optimizer
from utils import BlockDropError, parse_base_checkpoint_name, parse_checkpoint_name, to_standard_keys
from utils.config import TrainConfig


def run_script(script: str, *args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=str(cwd),
                          env=script_env(), capture_output=True, text=True, timeout=600)


# ---------------------------------------------------------------- the scripts chain
@pytest.mark.slow
def test_pretrain_then_curriculum_then_finetune_then_test(tmp_path):
    data = tmp_path / "data"
    write_cifar10(data, n_train=10, n_test=12)
    common = ["--model", "R32_C10", "--data_dir", str(data), "--workers", "0", "--device", "cpu",
              "--batch_size", "16"]

    pre = run_script("pretrain.py", *common, "--epochs", "2", cwd=tmp_path)
    assert pre.returncode == 0, pre.stderr
    bases = list((tmp_path / "cv/pretrained/R32_C10").glob("pk_E_*_A_*.t7"))
    assert len(bases) == 1 and parse_base_checkpoint_name(bases[0])["epoch"] == 2
    assert set(torch.load(bases[0], weights_only=True)["state_dict"]) >= {"conv1.weight", "layer1.0.conv1.weight"}

    # cl_training finds the base that pretrain.py wrote, without --base
    cl = run_script("cl_training.py", *common, "--max_epochs", "2", "--test_every", "1",
                    "--cv_dir", "cv/cl", cwd=tmp_path)
    assert cl.returncode == 0, cl.stderr
    assert [ln.split(" | ")[0] for ln in cl.stdout.splitlines() if ln.startswith("E: ")] == ["E: 0", "E: 1", "E: 2"]
    assert sum(ln.startswith("TS - A: ") for ln in cl.stdout.splitlines()) == 3
    cl_ckpts = sorted((tmp_path / "cv/cl").glob("ckpt_E_*.t7"), key=lambda p: parse_checkpoint_name(p)["epoch"])
    assert [parse_checkpoint_name(p)["epoch"] for p in cl_ckpts] == [0, 1, 2]
    cl_ckpt = cl_ckpts[-1]
    saved = torch.load(cl_ckpt, weights_only=True)
    assert {"agent", "epoch", "reward", "acc"} <= set(saved) and "resnet" not in saved
    fig = parse_checkpoint_name(cl_ckpt)
    assert fig["acc"] == pytest.approx(saved["acc"], abs=5e-4)
    assert (tmp_path / "cv/cl/args.txt").read_text().count("penalty: -1") == 1
    rows = [json.loads(ln) for ln in (tmp_path / "cv/cl/metrics.jsonl").read_text().splitlines()]
    assert [r["split"] for r in rows].count("test") == 3
    assert list((tmp_path / "cv/cl/log").glob("events.out.tfevents.*"))

    ft = run_script("finetune.py", *common, "--max_epochs", "1", "--test_every", "1",
                    "--pretrained", str(cl_ckpt), "--cv_dir", "cv/ft", cwd=tmp_path)
    assert ft.returncode == 0, ft.stderr
    ft_ckpt = max((tmp_path / "cv/ft").glob("ckpt_E_*.t7"), key=lambda p: parse_checkpoint_name(p)["epoch"])
    ft_fig = parse_checkpoint_name(ft_ckpt)
    assert ft_fig["epoch"] == 1
    assert {"agent", "resnet", "epoch", "reward", "acc"} <= set(torch.load(ft_ckpt, weights_only=True))

    out = run_script("test.py", "--model", "R32_C10", "--data_dir", str(data), "--device", "cpu",
                     "--load", str(ft_ckpt), "--json", "report.json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    # one image at a time with only the kept blocks gives the figures the checkpoint's name promised
    assert round(report["accuracy"], 3) == ft_fig["acc"]
    assert round(report["block_usage"], 2) == ft_fig["blocks"]
    assert report["unique_policies"] == ft_fig["unique"]

    # resuming continues at the next epoch
    resumed = run_script("finetune.py", *common, "--max_epochs", "0", "--test_every", "1",
                         "--load", str(ft_ckpt), "--cv_dir", "cv/ft", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert [ln.split(" | ")[0] for ln in resumed.stdout.splitlines() if ln.startswith("E: ")] == ["E: 2"]


def test_training_without_a_base_says_where_it_is_expected_and_that_pretrain_makes_it(tmp_path):
    write_cifar10(tmp_path / "data", n_train=2, n_test=2)
    res = run_script("cl_training.py", "--model", "R32_C10", "--data_dir", "data", "--device", "cpu",
                     cwd=tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert "cv/pretrained/R32_C10/pk_E_164_A_0.923.t7" in lines[0] and "pretrain.py" in lines[0]


@pytest.mark.parametrize("flags,named", [
    (["--batch_size", "0"], "--batch_size"), (["--alpha", "0.2"], "--alpha"), (["--max_epochs", "x"], "--max_epochs"),
    (["--model", "R57_C10"], "R57_C10"), (["--lr", "nan"], "--lr"), (["--workers", "-1"], "--workers"),
])
@pytest.mark.parametrize("script", [cl_training, finetune])
def test_training_bad_flags_are_one_line_and_exit_2(tmp_path, script, flags, named):
    assert named in assert_one_line_error(run_main(script, *flags, cwd=tmp_path))


def test_finetune_rejects_a_curriculum_checkpoint_of_another_configuration(tmp_path):
    write_cifar10(tmp_path / "data", n_train=2, n_test=2)
    resnet = build_resnet(get_config("R32_C10"))
    torch.save({"state_dict": to_standard_keys(resnet.state_dict())}, tmp_path / "base.t7")
    torch.save({"agent": build_agent(get_config("R110_C10")).state_dict(), "epoch": 3}, tmp_path / "cl.t7")
    res = run_script("finetune.py", "--model", "R32_C10", "--data_dir", "data", "--device", "cpu",
                     "--base", "base.t7", "--pretrained", "cl.t7", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "54" in res.stderr and "15" in res.stderr


def test_scripts_import_without_running():
    scripts = ["cl_training", "finetune", "pretrain", "sweep", "visualize", "demo", "convert_base"]
    code = f"import {', '.join(scripts)}; from utils.pipeline import load_script; load_script('test')"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=script_env(), capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout == "" and res.stderr == "", res.stderr


def test_parallel_without_two_gpus_says_so_and_trains_on_the_one_device(tmp_path, capsys):
    cfg = get_config("R32_C10")
    torch.manual_seed(0)
    base = tmp_path / "base.t7"
    torch.save({"state_dict": to_standard_keys(build_resnet(cfg).state_dict())}, base)
    images, labels = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    args = cl_training.get_args_parser().parse_args(
        ["--model", "R32_C10", "--base", str(base), "--cv_dir", str(tmp_path / "cv"), "--batch_size", "4",
         "--max_epochs", "0", "--workers", "0", "--device", "cpu", "--parallel"])
    result = fit(TrainConfig.from_args(args, joint=False), datasets=(TensorDataset(images, labels),) * 2)
    out = capsys.readouterr().out
    assert "--parallel needs 2 or more CUDA GPUs; running on cpu" in out
    assert result["epoch"] == 0 and parse_checkpoint_name(result["checkpoint"])["epoch"] == 0


def _tiny_run(tmp_path, *extra: str, joint: bool = False, name: str = "cv") -> tuple[dict, TrainConfig]:
    """A run of R32_C10 on 24 random images, in this process."""
    cfg = get_config("R32_C10")
    torch.manual_seed(0)
    base = tmp_path / "base.t7"
    if not base.exists():
        torch.save({"state_dict": to_standard_keys(build_resnet(cfg).state_dict())}, base)
    g = torch.Generator().manual_seed(1)
    data = (TensorDataset(torch.rand(24, 3, 32, 32, generator=g), torch.randint(0, 10, (24,), generator=g)),
            TensorDataset(torch.rand(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)))
    script = finetune if joint else cl_training
    args = script.get_args_parser().parse_args(
        ["--model", "R32_C10", "--base", str(base), "--cv_dir", str(tmp_path / name), "--batch_size", "8",
         "--workers", "0", "--device", "cpu", "--test_every", "1", *extra])
    config = TrainConfig.from_args(args, joint=joint)
    return fit(config, datasets=data), config


def _tensors_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_same_seed_repeats_a_run_exactly(tmp_path):
    first, _ = _tiny_run(tmp_path, "--seed", "3", "--max_epochs", "1", joint=True, name="a")
    second, _ = _tiny_run(tmp_path, "--seed", "3", "--max_epochs", "1", joint=True, name="b")
    a, b = (torch.load(r["checkpoint"], weights_only=True) for r in (first, second))
    assert Path(first["checkpoint"]).name == Path(second["checkpoint"]).name
    assert _tensors_equal(a["agent"], b["agent"]) and _tensors_equal(a["resnet"], b["resnet"])
    assert (tmp_path / "a" / "metrics.jsonl").read_text() == (tmp_path / "b" / "metrics.jsonl").read_text()


def test_load_restores_agent_resnet_optimizer_and_the_epoch(tmp_path):
    first, _ = _tiny_run(tmp_path, "--seed", "0", "--max_epochs", "0", "--lr", "1e-3", joint=True)
    saved = torch.load(first["checkpoint"], weights_only=True)
    config = TrainConfig(joint=True, model="R32_C10", load=first["checkpoint"], lr=1e-3, base=None)
    nets = build_networks(config)
    assert nets.start_epoch == 1
    assert _tensors_equal(nets.agent.state_dict(), saved["agent"])
    assert _tensors_equal(nets.resnet.state_dict(), saved["resnet"])
    optimizer, _ = make_optimizer(config, nets)
    state = optimizer.state_dict()["state"]
    assert state.keys() == saved["optimizer"]["state"].keys() and len(state) > 0
    for index, entry in saved["optimizer"]["state"].items():
        assert all(torch.equal(state[index][k], v) for k, v in entry.items())


def test_an_optimizer_state_that_does_not_fit_is_an_error_naming_the_file(tmp_path):
    first, _ = _tiny_run(tmp_path, "--seed", "0", "--max_epochs", "0", joint=True)
    ckpt = torch.load(first["checkpoint"], weights_only=True)
    ckpt["optimizer"]["param_groups"][0]["params"] = ckpt["optimizer"]["param_groups"][0]["params"][:5]
    bad = tmp_path / "bad_optimizer.t7"
    torch.save(ckpt, bad)
    config = TrainConfig(joint=True, model="R32_C10", load=str(bad))
    with pytest.raises(BlockDropError, match="bad_optimizer.t7.*optimizer state does not fit"):
        make_optimizer(config, build_networks(config))


def test_learning_rate_follows_the_originals_step_schedule_from_any_start_epoch():
    agent = build_agent(get_config("R32_C10"))
    for start in (0, 4):
        config = TrainConfig(joint=False, model="R32_C10", lr=3e-3, lr_decay_ratio=0.1, epoch_step=3)
        nets = Networks(agent, build_resnet(get_config("R32_C10")), start_epoch=start, policy_start="random init")
        optimizer, schedule = make_optimizer(config, nets)
        for epoch in range(start, 10):
            assert optimizer.param_groups[0]["lr"] == 3e-3 * 0.1 ** (epoch // 3), epoch  # the original's formula
            optimizer.step()  # no gradients: nothing moves, but the schedule sees the usual order
            schedule.step()


def test_pretrain_learning_rate_warms_up_then_drops_at_each_milestone():
    args = pretrain.get_args_parser().parse_args(["--lr", "0.1", "--warmup", "1", "--milestones", "3", "5"])
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=args.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: pretrain.lr_factor(args, e + 1))
    seen = []
    for _ in range(6):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert seen == pytest.approx([0.01, 0.1, 0.01, 0.01, 0.001, 0.001], rel=1e-12)


def test_finetuning_with_per_image_runs_each_block_on_the_images_that_keep_it(tmp_path):
    torch.manual_seed(0)
    cfg = get_config("R32_C10")
    resnet, agent = build_resnet(cfg).train(), build_agent(cfg).train()
    optimizer = torch.optim.Adam(list(agent.parameters()) + list(resnet.parameters()), lr=1e-3)
    calls = {}
    for t, (s, i) in enumerate(resnet.block_index):
        resnet.blocks[s][i].register_forward_hook(lambda m, inp, out, t=t: calls.setdefault(t, []).append(len(inp[0])))
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)
    out = train_step(agent, resnet, x, y, optimizer, 15, RLConfig(penalty=-5, joint=True, execution="per_image"))
    kept = out["policy"].sum(0).long().tolist()
    assert any(0 < n < 8 for n in kept)  # some blocks run on some of the images only
    for t, n in enumerate(kept):
        if n:  # the sampled pass (the last call) ran the block on its images only
            assert calls[t][-1] == n, (t, calls[t], n)
    result, _ = _tiny_run(tmp_path, "--per_image", "--max_epochs", "0", "--seed", "0", joint=True)
    assert "per_image: True\n" in (tmp_path / "cv" / "args.txt").read_text() and result["checkpoint"]


def test_pretrain_tests_every_n_epochs_and_always_at_the_last(tmp_path):
    data = tmp_path / "data"
    write_cifar10(data, n_train=4, n_test=6)
    out = run_script("pretrain.py", "--model", "R20_C10", "--data_dir", str(data), "--workers", "0", "--device", "cpu",
                     "--batch_size", "8", "--epochs", "3", "--test_every", "2", "--cv_dir", "base", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("E: ")]
    assert [("TS: " in ln) for ln in lines] == [False, True, True]  # epoch 1 untested, 2 due, 3 the last
    assert len(list((tmp_path / "base").glob("pk_E_3_A_*.t7"))) == 1
