"""Shared helpers for the test suite: generated CIFAR files, checkpoints laid
out like the authors' released ones, the standard ResNet key layout, and a
runner for ``test.py`` as a subprocess.

Everything here is built from SPEC facts, not from the code under test, so a
test that uses it can fail when the code is wrong.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import re
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from utils.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]

# No test touches the network, and none sees weights a developer keeps in the torch hub cache.
os.environ["BLOCKDROP_NO_DOWNLOAD"] = "1"
os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="blockdrop-tests-torch-home-")

# `make test` runs the files in parallel workers (pytest-xdist) that share the cores: one thread each, for
# the worker and for the scripts it starts, so that they do not compete for the same cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

TEST_SCRIPT = ROOT / "test.py"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]

# SPEC section 7 reference costs of the CIFAR pieces (FLOPs, one image)
CIFAR_STEM = 2 * 3 * 16 * 3 * 3 * 32 * 32  # 884,736
CIFAR_BLOCK = 9_437_184
CIFAR_FIRST_OF_STAGE = 7_077_888
CIFAR_POLICY_NET_K54 = 24_484_736


# --------------------------------------------------------------------------
# FLOPs from layer shapes, the SPEC's convention
# --------------------------------------------------------------------------
def conv_flops(cin: int, cout: int, k: int, hout: int, wout: int) -> int:
    return 2 * cin * cout * k * k * hout * wout


def linear_flops(n_in: int, n_out: int) -> int:
    return 2 * n_in * n_out


def cifar_fc_flops(classes: int) -> int:
    return linear_flops(64, classes)


def cifar_block_costs(n: int) -> list[int]:
    """Per-block FLOPs of a CIFAR ResNet with n blocks per stage, from the shapes."""
    costs = []
    for stage, (width, size) in enumerate([(16, 32), (32, 16), (64, 8)]):
        for i in range(n):
            cin = width // 2 if (stage > 0 and i == 0) else width
            costs.append(conv_flops(cin, width, 3, size, size) + conv_flops(width, width, 3, size, size))
    return costs


# --------------------------------------------------------------------------
# CIFAR python-layout files
# --------------------------------------------------------------------------
def images_to_rows(images_hwc: np.ndarray) -> np.ndarray:
    """N x 32 x 32 x 3 uint8 -> N x 3072 rows: 1024 R values, then G, then B (row-major)."""
    n = len(images_hwc)
    rows = np.empty((n, 3072), dtype=np.uint8)
    for c in range(3):
        rows[:, c * 1024:(c + 1) * 1024] = images_hwc[:, :, :, c].reshape(n, 1024)
    return rows


def write_cifar_batch(path: Path, rows: np.ndarray, labels, label_key: str = "labels",
                      bytes_keys: bool = False) -> None:
    entry = {
        "batch_label": path.name,
        "data": np.asarray(rows, dtype=np.uint8),
        label_key: [int(v) for v in labels],
        "filenames": [f"img_{i}.png" for i in range(len(labels))],
    }
    if bytes_keys:
        entry = {k.encode(): v for k, v in entry.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(entry, fh, protocol=2)


def write_cifar10(data_dir: Path, test_images: np.ndarray | None = None, test_labels=None,
                  n_train: int = 2, n_test: int = 8, seed: int = 0,
                  bytes_keys: bool = False) -> dict:
    """Write data_batch_1..5 and test_batch under ``data_dir/cifar-10-batches-py``.
    Returns the arrays written (HWC uint8 images and labels)."""
    rng = np.random.default_rng(seed)
    folder = Path(data_dir) / CIFAR10_FOLDER
    train_images, train_labels = [], []
    for name in CIFAR10_TRAIN:
        imgs = rng.integers(0, 256, size=(n_train, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n_train)
        write_cifar_batch(folder / name, images_to_rows(imgs), labels, bytes_keys=bytes_keys)
        train_images.append(imgs)
        train_labels.append(labels)
    if test_images is None:
        test_images = rng.integers(0, 256, size=(n_test, 32, 32, 3), dtype=np.uint8)
    if test_labels is None:
        test_labels = rng.integers(0, 10, size=len(test_images))
    write_cifar_batch(folder / "test_batch", images_to_rows(test_images), test_labels,
                      bytes_keys=bytes_keys)
    return {
        "folder": folder,
        "train_images": np.concatenate(train_images),
        "train_labels": np.concatenate(train_labels),
        "test_images": np.asarray(test_images),
        "test_labels": np.asarray(test_labels),
    }


def cifar_folder(tmp: Path, n_train: int, n_test: int, seed: int) -> Path:
    """``tmp`` with CIFAR-10 files under ``data/`` and an R32_C10 base (random
    weights, seeded) in the standard layout as ``base.t7``."""
    from models import build_resnet, get_config

    write_cifar10(tmp / "data", n_train=n_train, n_test=n_test, seed=seed)
    torch.manual_seed(0)
    torch.save({"state_dict": standard_layout(build_resnet(get_config("R32_C10")).state_dict())}, tmp / "base.t7")
    return tmp


def images_as_tensor(images_hwc: np.ndarray) -> torch.Tensor:
    """HWC uint8 -> float N x 3 x H x W in [0, 1] (what ToTensor gives)."""
    return torch.from_numpy(np.ascontiguousarray(images_hwc)).permute(0, 3, 1, 2).float() / 255


# --------------------------------------------------------------------------
# models and checkpoints
# --------------------------------------------------------------------------
def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial affine weights and running statistics,
    so eval-mode checks exercise them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=gen))
                m.bias.copy_(0.2 * torch.randn(n, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
    return model


def strip_nbt(state: dict) -> dict:
    """Drop BN ``num_batches_tracked`` (absent from files of PyTorch < 0.4.1)."""
    return {k: v.clone() for k, v in state.items() if not k.endswith("num_batches_tracked")}


def authors_agent_state(agent: nn.Module, old_fc: bool = True) -> dict:
    """An agent state dict as the authors' release holds it: no
    num_batches_tracked and, for old agents, a stray ``features.fc``."""
    state = strip_nbt(agent.state_dict())
    if old_fc:
        dim = agent.logit.in_features
        state["features.fc.weight"] = torch.randn(10, dim)
        state["features.fc.bias"] = torch.randn(10)
    return state


def save_legacy(obj: object, path: Path) -> Path:
    """torch.save in the pre-1.6 (non-zip) format, as the authors' files are."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    return path


_FLAT_BLOCK = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.*)$")
_FLAT_DS = re.compile(r"^ds\.(\d+)\.(.*)$")


def standard_layout(flat_state: dict, prefix: str = "") -> dict:
    """Flat keys -> the standard ResNet layout of SPEC section 6:
    blocks.{s}.{i}.X -> layer{s+1}.{i}.X, ds.{s}.{j}.X -> layer{s+1}.0.downsample.{j}.X."""
    out = {}
    for key, value in flat_state.items():
        m, d = _FLAT_BLOCK.match(key), _FLAT_DS.match(key)
        if m:
            key = f"layer{int(m[1]) + 1}.{m[2]}.{m[3]}"
        elif d:
            key = f"layer{int(d[1]) + 1}.0.downsample.{d[2]}"
        out[prefix + key] = value
    return out


def constant_policy_agent(agent: nn.Module, keep: list[bool]) -> nn.Module:
    """Zero logit weights and a bias of +10 (keep) or -10 (drop) per block: the
    same greedy policy for every image."""
    with torch.no_grad():
        agent.logit.weight.zero_()
        agent.logit.bias.copy_(torch.tensor([10.0 if k else -10.0 for k in keep]))
    return agent


def assert_same_weights(model: nn.Module, state: dict) -> None:
    own = model.state_dict()
    for key, value in state.items():
        if key.startswith("features.fc."):
            continue
        assert key in own, key
        assert torch.equal(own[key].cpu(), value.cpu()), key


# --------------------------------------------------------------------------
# test.py as a subprocess
# --------------------------------------------------------------------------
def script_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["BLOCKDROP_NO_DOWNLOAD"] = "1"
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


def script_command(*args: str) -> list[str]:
    return [sys.executable, str(TEST_SCRIPT), *map(str, args)]


def run_concurrently(cases: dict[str, tuple[list[str], Path]]) -> dict[str, subprocess.CompletedProcess]:
    """Start every command (``name: (argv, cwd)``) at once, then wait for each."""
    procs = {name: subprocess.Popen(argv, cwd=str(cwd), env=script_env(), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, (argv, cwd) in cases.items()}
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results


def assert_one_line_error(result: subprocess.CompletedProcess) -> str:
    """Bad input: exit status 2, one line on stderr that says error, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "error" in lines[0]
    return lines[0]


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the PNG signature."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


def assert_legible_png(path: Path) -> None:
    """A valid PNG of a size a person can read, with real content."""
    assert Path(path).is_file(), path
    width, height = png_size(path)
    assert 200 <= width <= 4000 and 200 <= height <= 4000, (Path(path).name, width, height)
    assert Path(path).stat().st_size > 5_000, (Path(path).name, Path(path).stat().st_size)


def run_main(module, *argv, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """A script's command line run in this process through its ``run_cli`` (one
    line and exit status 2 on bad input), stdout and stderr captured; quicker
    than a subprocess. An unexpected exception propagates with its traceback."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.ExitStack() as stack:
        if cwd is not None:
            stack.enter_context(contextlib.chdir(cwd))
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        try:
            run_cli(module.main, module.get_args_parser(), [str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code
    return subprocess.CompletedProcess([module.__name__, *map(str, argv)], code, out.getvalue(), err.getvalue())


def run_test_script(*args: str, cwd: Path | None = None, env: dict | None = None,
                    timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(script_command(*args), cwd=str(cwd or ROOT), env=env or script_env(),
                          capture_output=True, text=True, timeout=timeout, check=False)


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------
@pytest.fixture(scope="session")
def built_models():
    """Builds each configuration's (untouched) ResNet or agent once per session;
    tests that only read them share them. ResNet-101 and its agent are built on
    the meta device (shapes only, no arithmetic): key and FLOP checks need no
    values, and a real ResNet-101 pass is slow on a small CPU."""
    from models import build_agent, build_resnet, get_config

    cache: dict = {}

    def get(name: str, which: str = "resnet"):
        if (name, which) not in cache:
            cfg = get_config(name)
            device = "meta" if cfg.arch == "imagenet" else "cpu"
            with torch.device(device):
                model = build_resnet(cfg) if which == "resnet" else build_agent(cfg)
            cache[(name, which)] = model.eval()
        return cache[(name, which)]

    return get


@pytest.fixture
def cifar10_dir(tmp_path):
    data_dir = tmp_path / "data"
    written = write_cifar10(data_dir)
    return data_dir, written
