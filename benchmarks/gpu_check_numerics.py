"""The numerical checks of ``gpu_check.py``: a device against the CPU on the
same weights, inputs and sampled policies (forwards in every execution mode,
one curriculum and one finetuning step), training under ``--amp`` semantics,
the data loader's CUDA settings, and two processes under torchrun.

Each check returns an ``Outcome``; an exception is the check's failure (the
caller records its first line)."""

from __future__ import annotations

import contextlib
import copy
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
from torch.distributions import Bernoulli
from torch.utils.data import TensorDataset

from models import build_agent, build_resnet, get_config
from rl import RLConfig, train_step
from speed import random_policies
from utils.distributed import Processes
from utils.runtime import amp_dtype, data_loaders, to_device

# Tolerances of float32 (TF32 off) against float32, widened by NOISE times the CPU's own float32 error,
# measured against float64 in the same run: logits and losses value by value, gradients as one vector.
RTOL, GRAD_RTOL, NOISE = 1e-3, 1e-2, 10
MODES = ("full", "masked", "per_image", "kept")
FALLS_TO = 0.5  # finetuning on one fixed batch: the last steps' cross-entropy below this share of the first's
DDP_HELPER = Path(__file__).resolve().parent / "_ddp_steps.py"
CPU = torch.device("cpu")


class Outcome(NamedTuple):
    measured: str
    criterion: str = ""
    ok: bool | None = None  # None: a measurement, not a pass/fail check
    status: str | None = None  # shown instead of "measured" when ok is None


def tolerance_text(gradients: bool = False) -> str:
    """The criterion, short (the table's header explains it)."""
    text = f"max |Δ| ≤ {RTOL:g} × max |value| + {NOISE} × CPU error"
    return text + f"; ‖Δ‖/‖g‖ ≤ {GRAD_RTOL:g} + {NOISE} × CPU error" if gradients else text


def tolerance_explained() -> str:
    return (f"values (logits, losses) agree when max |Δ| ≤ {RTOL:g} × max |CPU value| + {NOISE} × the CPU's "
            f"own float32 error; gradients, as one vector g, when ‖Δ‖ ≤ ({GRAD_RTOL:g} + {NOISE} × the CPU's "
            "relative float32 error) × ‖g‖. The CPU's float32 error is measured in the same run, against the "
            "CPU in float64: at their random start deep networks amplify rounding on the way back (BatchNorm's "
            "exploding gradients, a max-pool or ReLU tie that rounds the other way), and ResNet-101's float32 "
            "gradients after a finetuning step differ from float64 by a few percent")


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
@contextlib.contextmanager
def float32_exact():
    """TF32 off for cuDNN convolutions and CUDA matmuls (cuDNN allows it by
    default), so that float32 is compared with float32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@contextlib.contextmanager
def shared_draws(seed: int):
    """Bernoulli samples from one seeded CPU stream on every device (CPU and
    CUDA generators differ): each device then samples the same policy from its
    own, nearly equal, probabilities."""
    generator = torch.Generator().manual_seed(seed)
    real = Bernoulli.sample

    def sample(self, sample_shape=torch.Size()):  # noqa: B008 (the signature of Bernoulli.sample)
        with torch.no_grad():
            u = torch.rand(torch.Size(sample_shape) + self.batch_shape, generator=generator, dtype=torch.float64)
            return (u.to(self.probs.device) < self.probs).to(self.probs.dtype)

    Bernoulli.sample = sample
    try:
        yield
    finally:
        Bernoulli.sample = real


def random_images(n: int, size: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def calibrate(net: nn.Module, images: torch.Tensor) -> nn.Module:
    """BatchNorm running statistics of ``images``, then eval mode (a fresh
    network's statistics, 0 and 1, let eval-mode activations grow block by block)."""
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # the plain average of this batch
    net.train()
    net(images)
    for m in norms:
        m.momentum = 0.1
    return net.eval()


class Agreement(NamedTuple):
    ok: bool
    diff: float  # max |device - CPU| (gradients: the norm of the difference over the norm of the CPU's)
    scale: float  # max |CPU value| (gradients: the norm of the CPU's)
    noise: float  # the same measure for the CPU in float32 against float64: float32's own error here


def agreement(values: list[torch.Tensor], references: list[torch.Tensor], exact: list[torch.Tensor]) -> Agreement:
    """Tensor by tensor: the device's float32 ``values`` against the CPU's
    float32 ``references``, within RTOL of the largest reference value plus NOISE
    times the CPU's own float32 error against float64 (``exact``)."""
    ok, diff, scale, noise = True, 0.0, 0.0, 0.0
    for a, b, c in zip(values, references, exact):
        a, b, c = (t.detach().double().cpu() for t in (a, b, c))
        d, s, n = (a - b).abs().max().item(), b.abs().max().item(), (b - c).abs().max().item()
        ok = ok and math.isfinite(d) and d <= RTOL * s + NOISE * n
        diff, scale, noise = max(diff, d), max(scale, s), max(noise, n)
    return Agreement(ok, diff, scale, noise)


def gradient_agreement(values: list, references: list, exact: list) -> Agreement:
    """The gradients as one vector (a parameter without a gradient on every
    side is left out), within GRAD_RTOL plus NOISE times the CPU's own relative
    float32 error (see ``tolerance_explained``)."""
    present = [(a is None, b is None, c is None) for a, b, c in zip(values, references, exact)]
    if any(len(set(flags)) > 1 for flags in present):
        raise AssertionError("a parameter has a gradient on one side and none on another")
    a, b, c = (torch.cat([t.detach().double().cpu().flatten() for t in ts if t is not None])
               for ts in (values, references, exact))
    norm = b.norm().item()
    diff, noise = (a - b).norm().item() / norm, (b - c).norm().item() / c.norm().item()
    return Agreement(math.isfinite(diff) and diff <= GRAD_RTOL + NOISE * noise, diff, norm, noise)


def on(device: torch.device, layout, *modules: nn.Module, dtype: torch.dtype = torch.float32) -> list[nn.Module]:
    return [copy.deepcopy(m).to(device, dtype, memory_format=layout) for m in modules]


# the three sides of a comparison: the device (channels-last), the CPU, and the CPU in float64
def sides(device: torch.device, layout) -> list[tuple[torch.device, object, torch.dtype]]:
    return [(device, layout, torch.float32), (CPU, torch.contiguous_format, torch.float32),
            (CPU, torch.contiguous_format, torch.float64)]


def logits(resnet: nn.Module, x: torch.Tensor, policies: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "full":
        return resnet(x)
    if mode == "kept":
        return resnet.forward_single(x, policies[0])
    return resnet(x, policies, mode)


# --------------------------------------------------------------------------
# the device against the CPU
# --------------------------------------------------------------------------
@torch.no_grad()
def forward_outputs(resnet: nn.Module, agent: nn.Module, x: torch.Tensor, policies: torch.Tensor,
                    device: torch.device, layout, dtype: torch.dtype) -> dict[str, list[torch.Tensor]]:
    resnet, agent = on(device, layout, resnet, agent, dtype=dtype)
    x, policies = x.to(device, dtype).contiguous(memory_format=layout), policies.to(device)
    with float32_exact():
        out = {mode: [logits(resnet, x, policies, mode)] for mode in MODES}
        out["policy network"] = list(agent(x))  # keep-probabilities and value
    return out


def forward_agreement(name: str, batch: int, device: torch.device, layout) -> Outcome:
    """The ResNet's logits in each execution mode and the policy network's
    outputs, eval mode, random per-image policies keeping half of the blocks."""
    cfg = get_config(name)
    torch.manual_seed(0)
    resnet, agent = build_resnet(cfg), build_agent(cfg)
    x = random_images(batch, cfg.input_size, seed=1)
    calibrate(resnet, x)
    calibrate(agent, x)
    policies = random_policies(batch, cfg.num_blocks, 0.5, seed=2)
    dev, ref, exact = (forward_outputs(resnet, agent, x, policies, *side) for side in sides(device, layout))
    checks = {key: agreement(dev[key], ref[key], exact[key]) for key in ref}
    largest = max(checks[mode].scale for mode in MODES)
    noise = max(a.noise for a in checks.values())
    return Outcome("max |Δ|: " + ", ".join(f"{key} {a.diff:.1e}" for key, a in checks.items())
                   + f" (|logits| ≤ {largest:.3g}; the CPU's float32 error ≤ {noise:.1e})",
                   tolerance_text(), all(a.ok for a in checks.values()))


def one_step(agent: nn.Module, resnet: nn.Module, x: torch.Tensor, y: torch.Tensor, joint: bool,
             device: torch.device, layout, dtype: torch.dtype) -> dict:
    """One ``train_step`` on copies of the networks: its loss, policy and gradients."""
    agent, resnet = on(device, layout, agent, resnet, dtype=dtype)
    agent.train()
    resnet.train(joint)
    if not joint:
        resnet.requires_grad_(False)
    params = list(agent.parameters()) + (list(resnet.parameters()) if joint else [])
    optimizer = torch.optim.Adam(params, lr=1e-4)
    decided = agent.num_blocks if joint else max(1, agent.num_blocks // 2)  # a curriculum forces a prefix on
    rl = RLConfig(alpha=0.8, penalty=-5.0, joint=joint)
    with shared_draws(seed=3), float32_exact():
        out = train_step(agent, resnet, x.to(device, dtype).contiguous(memory_format=layout), y.to(device),
                         optimizer, decided, rl)
    return {"loss": torch.tensor(out["loss"]), "policy": out["policy"].cpu(), "grads": [p.grad for p in params]}


def step_agreement(name: str, batch: int, joint: bool, device: torch.device, layout) -> Outcome:
    """One curriculum step (``joint`` False) or one finetuning step on each
    side: the same sampled policy, loss and gradients."""
    cfg = get_config(name)
    torch.manual_seed(0)
    resnet, agent = build_resnet(cfg), build_agent(cfg)
    x = random_images(batch, cfg.input_size, seed=1)
    y = torch.randint(cfg.num_classes, (batch,), generator=torch.Generator().manual_seed(4))
    calibrate(resnet, x)
    dev, ref, exact = (one_step(agent, resnet, x, y, joint, *side) for side in sides(device, layout))
    if not torch.equal(ref["policy"], dev["policy"]) or not torch.equal(ref["policy"], exact["policy"]):
        return Outcome("the sampled policies differ", "the same sampled policy", False)
    loss = agreement([dev["loss"]], [ref["loss"]], [exact["loss"]])
    grads = gradient_agreement(dev["grads"], ref["grads"], exact["grads"])
    kept = int(ref["policy"].sum())
    return Outcome(f"loss {ref['loss'].item():.4g}, |Δ| {loss.diff:.1e} (the CPU's float32 error {loss.noise:.1e}); "
                   f"gradients: ‖Δ‖ / ‖g‖ {grads.diff:.1e} (the CPU's float32 error {grads.noise:.1e}); "
                   f"the same sampled policy ({kept} of {ref['policy'].numel()} blocks kept)",
                   tolerance_text(gradients=True), loss.ok and grads.ok)


# --------------------------------------------------------------------------
# training under --amp, channels-last
# --------------------------------------------------------------------------
def amp_choice(device: torch.device) -> torch.dtype | None:
    """What ``--amp`` runs with on this device (None on the CPU: float32)."""
    return amp_dtype(True, device) if device.type == "cuda" else None


def precision_name(dtype: torch.dtype | None) -> str:
    if dtype is None:
        return "float32"
    return "float16 autocast + GradScaler" if dtype == torch.float16 else f"{str(dtype).removeprefix('torch.')} autocast"


def force_policies(agent: nn.Module, policies: torch.Tensor) -> None:
    """Logit offsets of +-50: in float32 the agent's keep-probabilities are then
    0 and 1, so with alpha 1 every step samples exactly ``policies``."""
    offset = 50 * (2 * policies - 1)
    agent.logit.register_forward_hook(lambda module, inputs, out: out + offset.to(out.device))


def amp_training(name: str, batch: int, steps: int, joint: bool, dtype: torch.dtype | None,
                 device: torch.device, layout, lr: float = 1e-3) -> Outcome:
    """``steps`` steps on one fixed batch of random images. Finetuning: the
    policies are fixed, so the loss is the cross-entropy, which must fall;
    curriculum: the policy samples freely, every loss and weight must stay finite."""
    cfg = get_config(name)
    torch.manual_seed(0)
    agent, resnet = on(device, layout, build_agent(cfg), build_resnet(cfg))
    if joint:
        force_policies(agent, random_policies(batch, cfg.num_blocks, 0.5, seed=1))
    else:
        resnet.requires_grad_(False)
    agent.train()
    resnet.train(joint)
    params = list(agent.parameters()) + (list(resnet.parameters()) if joint else [])
    start = [p.detach().clone() for p in agent.parameters()]
    optimizer = torch.optim.Adam(params, lr=lr)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    rl = RLConfig(alpha=1.0 if joint else 0.8, penalty=-5.0, joint=joint, amp=dtype)
    x = to_device(random_images(batch, cfg.input_size, seed=2), device, layout)
    y = torch.randint(cfg.num_classes, (batch,), generator=torch.Generator().manual_seed(3)).to(device)
    losses = [train_step(agent, resnet, x, y, optimizer, cfg.num_blocks, rl, scaler)["loss"] for _ in range(steps)]
    finite = all(torch.isfinite(p).all() for p in params)
    scale = f"; final loss scale {scaler.get_scale():.0f}" if scaler else ""
    if joint:
        last = sum(losses[-3:]) / 3
        return Outcome(f"cross-entropy {losses[0]:.3f} → {last:.3f} (the last 3 steps' mean); every loss "
                       f"finite; weights {'finite' if finite else 'NOT finite'}{scale}",
                       f"falls below {FALLS_TO:g} × the first; finite", finite and last < FALLS_TO * losses[0])
    moved = max((p.detach() - s).abs().max().item() for p, s in zip(agent.parameters(), start))
    return Outcome(f"loss {losses[0]:.3f} → {losses[-1]:.3f}, every loss finite; the policy network's weights "
                   f"{'finite' if finite else 'NOT finite'}, moved by up to {moved:.1e}{scale}",
                   "finite; the policy network learns", finite and moved > 0)


# --------------------------------------------------------------------------
# the data loader and torchrun
# --------------------------------------------------------------------------
def loader_check(device: torch.device, workers: int, layout) -> Outcome:
    """Two epochs through ``utils.runtime.data_loaders``: pinned batches and workers
    that persist between epochs on CUDA, every image delivered intact."""
    images, labels = torch.rand(12, 3, 8, 8), torch.arange(12)
    dataset = TensorDataset(images, labels)
    loader, _ = data_loaders(dataset, dataset, Processes(device=device), 4, workers, seed=0)
    cuda = device.type == "cuda"
    iterators, pinned, seen, intact = [], [], [], True
    for _ in range(2):
        iterators.append(iter(loader))
        for x, y, index in iterators[-1]:
            pinned.append(cuda and x.is_pinned())
            moved = to_device(x, device, layout)
            intact = intact and torch.equal(moved.cpu(), images[index]) and torch.equal(y, labels[index])
            seen += index.tolist()
    persistent = iterators[0] is iterators[1]
    ok = intact and sorted(seen) == sorted(list(range(12)) * 2) and all(p == cuda for p in pinned) \
        and persistent == (cuda and workers > 0)
    return Outcome(f"{len(pinned)} batches, every image once per epoch and intact on {device}; batches "
                   f"{'pinned' if all(pinned) else 'not pinned'}; workers "
                   f"{'persist' if persistent else 'restart'} between epochs",
                   "CUDA: pinned, workers persist (CPU: neither)", ok)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:240]


def one_line_reason(text: str) -> str:
    """The last line of a failed process's output that names an error, else its last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"(Error|Exception|error)\b", line)]
    return (errors or lines or ["no output"])[-1][:240]


def torchrun_check(device: torch.device, steps: int = 2) -> Outcome:
    """Two processes, each ``steps`` finetuning steps on its own images under
    DistributedDataParallel: both must end with the same parameters."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   str(DDP_HELPER), out, "--device", str(device), "--steps", str(steps)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"torchrun exited {result.returncode}: {one_line_reason(result.stderr + result.stdout)}")
        ranks = [torch.load(Path(out) / f"rank{r}.t7", weights_only=True) for r in (0, 1)]
    diff = max((ranks[0]["params"][k] - v).abs().max().item() for k, v in ranks[1]["params"].items())
    moved = min(rank["moved"] for rank in ranks)
    losses = ", ".join(f"{loss:.3f}" for loss in ranks[0]["losses"] + ranks[1]["losses"])
    return Outcome(f"{ranks[0]['backend']} on {ranks[0]['device']} and {ranks[1]['device']}: parameters "
                   f"{'equal' if diff == 0 else f'differ by up to {diff:.1e}'} on both processes, moved by up to "
                   f"{moved:.1e}; losses {losses}", "equal parameters, moved", diff == 0 and moved > 0)
