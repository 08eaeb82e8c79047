"""The digits configuration and the demo (the README's main job), shortened."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, assert_legible_png, run_main, script_env
from models import build_agent, build_resnet, get_config
from utils import digits_arrays, get_datasets
from utils.pipeline import load_script


def test_digits_configuration_loads_offline_with_the_right_shapes_classes_and_split():
    cfg = get_config("R32_Digits")
    assert (cfg.num_blocks, cfg.num_classes) == (15, 10)
    train, test = get_datasets(cfg, "does-not-exist/")  # no data_dir needed: scikit-learn ships it
    assert (len(train), len(test)) == (1437, 360)
    image, label = test[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.max() > 0.5
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])  # grey, 3 channels
    # stratified: every class has 35-37 of the 360 test images
    counts = torch.bincount(test.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37 and int(label) in range(10)
    assert torch.bincount(train.labels, minlength=10).min() > 0
    # the split is fixed: the same images every time, and train and test do not overlap
    (xtr, _), (xte, yte) = digits_arrays()
    (xtr2, _), (xte2, yte2) = digits_arrays()
    assert np.array_equal(xte, xte2) and np.array_equal(yte, yte2) and np.array_equal(xtr, xtr2)
    # the digits 8x8 images upsampled: sum of the test set pixels matches scikit-learn's originals
    from sklearn.datasets import load_digits

    assert len(xtr) + len(xte) == len(load_digits().target) == 1797
    # the models of the configuration run on it
    resnet, agent = build_resnet(cfg).eval(), build_agent(cfg).eval()
    batch = torch.stack([test[i][0] for i in range(4)])
    with torch.no_grad():
        assert resnet.forward_full(batch).shape == (4, 10)
        assert agent(batch)[0].shape == (4, 15)


@pytest.mark.slow
def test_shortened_demo_runs_end_to_end_and_writes_the_report_and_figures(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, str(ROOT / "demo.py"), "--out", str(out), "--device", "cpu",
           "--base_epochs", "1", "--cl_epochs", "0", "--ft_epochs", "0", "--sweep_penalties", "-1",
           "--limit", "48"]
    res = subprocess.run(cmd, cwd=tmp_path, env=script_env(), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    # every step is shown as its command
    for script in ("pretrain.py", "cl_training.py", "sweep.py", "finetune.py", "test.py", "visualize.py"):
        assert f"$ python {script} " in res.stdout, script
    report = json.loads((out / "report.json").read_text())
    table = (out / "report.txt").read_text()
    assert "full ResNet-32" in table and "BlockDrop (penalty -5)" in table
    assert table in res.stdout
    full, ours = report["full"], report["blockdrop"]
    assert full["images"] == ours["images"] == 48
    assert full["block_usage"] == 15.0 and full["flops"] == 137_725_184 + 24_479_744
    assert report["flops_ratio"] == ours["flops"] / full["flops"]
    assert report["time_ratio"] == ours["time_per_image"] / ours["full_time_per_image"] > 0
    assert "time/img" in table and ours["batch_size"] == 128
    assert 0.0 <= ours["accuracy"] <= 1.0
    sweep = json.loads((out / "sweep" / "sweep.json").read_text())
    assert [r["penalty"] for r in sweep["runs"]] == [-5.0, -1.0]
    for name in ("policies.png", "blocks_hist.png", "keep_rate.png", "easy_hard.png", "tradeoff.png"):
        assert_legible_png(out / "figures" / name)
    assert (out / "sweep" / "tradeoff.png").exists()
    assert list((out / "log").glob("events.out.tfevents.*"))
    # the finetuned digits model profiles alike one image at a time and in batches of 64, per image
    profiles = [run_main(load_script("test"), "--model", "R32_Digits", "--load", ours["checkpoint"], "--device", "cpu",
                         "--base", report["base"], "--batch_size", batch, "--time_images", 0,
                         "--json", tmp_path / f"b{batch}.json", cwd=tmp_path) for batch in (1, 64)]
    assert [p.returncode for p in profiles] == [0, 0]
    one, batched = (json.loads((tmp_path / f"b{b}.json").read_text()) for b in (1, 64))
    for key in ("images", "accuracy", "block_usage", "block_usage_std", "flops", "flops_std", "unique_policies"):
        assert one[key] == batched[key], key
    assert one["images"] == 360 and one["unique_policies"] > 1


def test_a_new_demo_run_sets_the_earlier_results_aside_without_losing_them(tmp_path):
    import demo

    out = tmp_path / "demo"
    kept = []
    for text in ("first run", "second run"):
        out.mkdir()
        (out / "report.txt").write_text(text)
        kept.append(demo.set_aside_results(out))
        assert not out.exists()
    assert kept[0] != kept[1] and kept[0].parent == kept[1].parent == tmp_path
    assert [(k / "report.txt").read_text() for k in kept] == ["first run", "second run"]
    assert all(k.name.startswith("demo-") for k in kept)
