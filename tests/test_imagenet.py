"""The ImageNet path end to end: torchvision's ResNet-101 as the R101 base (from
the torch hub cache or --base), and curriculum learning, finetuning and test.py
of R101_ImgNet on a tiny generated image folder, on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from conftest import ROOT, randomize_bn, script_env
from models import build_resnet, get_config
from utils.bases import find_default_base, load_base


def torchvision_resnet101(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return randomize_bn(torchvision.models.resnet101(), seed=seed).eval()


def test_torchvision_resnet101_weights_are_the_r101_base_with_identical_outputs(tmp_path):
    tv = torchvision_resnet101(1)
    path = tmp_path / "resnet101.pth"
    torch.save(tv.state_dict(), path)
    flat = build_resnet(get_config("R101_ImgNet")).eval()
    load_base(flat, path, "R101_ImgNet")
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        expected = tv(x)
        scale = expected.abs().max()  # random BatchNorm statistics grow the activations through 33 blocks
        assert torch.allclose(flat(x), expected, rtol=1e-5, atol=1e-5 * scale)
        assert torch.allclose(flat(x, torch.ones(1, 33)), expected, rtol=1e-5, atol=1e-5 * scale)


def test_the_r101_default_base_falls_back_to_torchvisions_file_in_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cfg = get_config("R101_ImgNet")
    assert find_default_base(cfg) is None
    hub = tmp_path / "torch" / "hub" / "checkpoints" / "resnet101-63fe2227.pth"
    hub.parent.mkdir(parents=True)
    hub.write_bytes(b"")
    assert find_default_base(cfg) == hub


def write_image_folder(root: Path, per_class: int) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("bird", "fish"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def run(*args, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    return result


@pytest.mark.slow
def test_r101_imagenet_curriculum_finetuning_and_profile_run_end_to_end(tmp_path):
    write_image_folder(tmp_path / "imagenet", per_class=2)
    env = script_env(TORCH_HOME=str(tmp_path / "torch"))
    hub = tmp_path / "torch" / "hub" / "checkpoints" / "resnet101-63fe2227.pth"
    hub.parent.mkdir(parents=True)
    torch.save(torchvision_resnet101(2).state_dict(), hub)  # the base: torchvision's file, where the hub keeps it
    common = ["--model", "R101_ImgNet", "--data_dir", "imagenet", "--device", "cpu", "--workers", "0",
              "--batch_size", "2", "--seed", "0", "--max_epochs", "0"]
    cl = run(ROOT / "cl_training.py", *common, "--cv_dir", "cv/cl", cwd=tmp_path, env=env)
    assert "random weights" in cl.stderr  # no ResNet-18 weights here: said in one line
    assert sum(line.startswith(("E: 0", "TS - ")) for line in cl.stdout.splitlines()) == 2
    ckpt = next((tmp_path / "cv" / "cl").glob("ckpt_E_0_*.t7"))
    assert torch.load(ckpt, weights_only=True)["base"]["path"] == str(hub)
    ft = run(ROOT / "finetune.py", *common, "--pretrained", ckpt, "--cv_dir", "cv/ft", cwd=tmp_path, env=env)
    assert "base ResNet: " in ft.stdout and sum(line.startswith("E: 0") for line in ft.stdout.splitlines()) == 1
    ft_ckpt = next((tmp_path / "cv" / "ft").glob("ckpt_E_0_*.t7"))
    profile = run(ROOT / "test.py", "--model", "R101_ImgNet", "--load", ft_ckpt, "--data_dir", "imagenet",
                  "--device", "cpu", "--json", "profile.json", "--time_images", "2", cwd=tmp_path, env=env)
    figures = json.loads((tmp_path / "profile.json").read_text())
    assert figures["images"] == 4 and figures["num_blocks"] == 33 and "Time/img" in profile.stdout
    assert 0 <= figures["block_usage"] <= 33 and figures["policy_flops"] == 471_918_592


def test_the_registrys_imagenet_bases_are_torchvisions_weights():
    from torchvision.models import ResNet50_Weights, ResNet101_Weights

    from models import TORCHVISION_BASES

    assert TORCHVISION_BASES == {"R101_ImgNet": ResNet101_Weights.IMAGENET1K_V1.url,
                                 "R50_ImgNet": ResNet50_Weights.IMAGENET1K_V1.url}
    assert get_config("R50_ImgNet").torchvision_base == TORCHVISION_BASES["R50_ImgNet"]
