"""The timings of ``gpu_check.py``, measured as ``benchmarks/speed.py`` measures
them (its functions, on the device and layout given): per-image execution and
the masked form against the full network, images per second of training
steps and of a pretraining epoch on each data path (the DataLoader against
``--device_data``), and ``torch.compile`` against eager execution."""

from __future__ import annotations

import contextlib
import time
from dataclasses import replace

import torch

import speed
import speed_data
from gpu_check_numerics import Outcome, calibrate, first_line, precision_name, random_images
from models import build_resnet, get_config
from utils.timing import seconds_per_image, synchronize

LEVELS = [0.3, 0.5]  # shares of the blocks the random per-image policies keep


@contextlib.contextmanager
def speed_layout(layout):
    """speed.py's networks and batches in ``layout`` (its ``--channels_last``)."""
    saved = speed.LAYOUT["memory_format"]
    speed.LAYOUT["memory_format"] = layout
    try:
        yield
    finally:
        speed.LAYOUT["memory_format"] = saved


def inference_speed(name: str, batch: int, images: int, repeats: int, device: torch.device,
                    layout) -> list[tuple[str, Outcome]]:
    """Time ratios of per-image execution and of the masked form to the full
    network, eval mode, float32, at each level of ``LEVELS``."""
    with speed_layout(layout):
        rows = speed.inference_rows(name, batch, images, repeats, device, levels=LEVELS)
    return [(f"{name}, batch {batch}, {row['policy']} ({row['blocks']:.1f} blocks)",
             Outcome(f"time ratio: per-image **{row['per_image']:.2f}**, masked {row['masked']:.2f}; "
                     f"full network {row['full_ms']:.3f} ms/img", f"FLOPs ratio {row['flops_ratio']:.2f}"))
            for row in rows]


def step_speed(name: str, batch: int, dtype: torch.dtype | None, repeats: int, device: torch.device,
               layout, keep: float = 0.5) -> list[tuple[str, Outcome]]:
    """Images per second of a curriculum step (per-image execution, the
    ResNet frozen) and of a finetuning step (masked form), interleaved."""
    phases = {"curriculum": (False, "per_image"), "finetuning": (True, "masked")}
    with speed_layout(layout):
        steps = {phase: speed.Step(name, batch, keep, joint, execution, device)
                 for phase, (joint, execution) in phases.items()}
    for step in steps.values():
        step.rl = replace(step.rl, amp=dtype)
        step.run(timed=False)  # warm-up
    for _ in range(repeats):
        for step in steps.values():
            step.run()
    return [(f"{name} {phase} step, batch {batch}, {keep:.0%} kept, {precision_name(dtype)}",
             Outcome(f"{batch / min(step.seconds):,.0f} images/s ({1000 * min(step.seconds):.1f} ms per step)"))
            for phase, step in steps.items()]


def data_path_speed(name: str, images: int, batch: int, repeats: int, device: torch.device, layout,
                    workers: int) -> list[tuple[str, Outcome]]:
    """Images per second of a pretraining epoch through the DataLoader (with
    ``workers`` workers, pinned and persistent on CUDA, and with none) and with
    ``--device_data`` (the data set on the device, augmented there)."""
    rows = speed_data.data_path_rows(name, images, batch, repeats, device, layout, workers, phases=("pretraining",))
    return [(f"{name} pretraining epoch, {images:,} images, batch {batch}, {row['path']}",
             Outcome(f"{row['images_per_s']:,.0f} images/s (**{row['ratio']:.2f}** × the DataLoader's with workers)"))
            for row in rows]


# torch.compile's forms: options, and the execution mode (None: every block)
COMPILED = {"full network": ({}, None), "per-image forward (dynamic=True)": ({"dynamic": True}, "per_image")}


def compile_speed(name: str, batch: int, repeats: int, device: torch.device, layout, form: str) -> Outcome:
    """``torch.compile`` of one of the forms of ``COMPILED`` in eval mode (the
    per-image forward with ``dynamic=True``: the images that keep a block vary
    in number): the time ratio to eager execution once it has compiled, what
    compiling cost, and what a batch with new policies costs; or why it did not
    compile."""
    options, mode = COMPILED[form]
    cfg = get_config(name)
    torch.manual_seed(0)
    x = random_images(3 * batch, cfg.input_size, seed=1)
    resnet = calibrate(build_resnet(cfg), x).to(device, memory_format=layout)
    x = x.to(device).contiguous(memory_format=layout)
    policies = speed.random_policies(len(x), resnet.num_blocks, 0.5).to(device)
    by_batch = {b.data_ptr(): p for b, p in zip(torch.split(x, batch), torch.split(policies, batch))}

    def run(net, b: torch.Tensor) -> torch.Tensor:
        return net(b) if mode is None else net(b, by_batch[b.data_ptr()], mode)

    torch.compiler.reset()
    try:
        return compiled_against_eager(resnet, torch.compile(resnet, **options), run, x, batch, repeats)
    except Exception as exc:  # any failure of the compiler is reported, not raised
        return Outcome(f"did not compile: {first_line(exc)}", status="not compiled")


@torch.no_grad()
def compiled_against_eager(resnet, compiled, run, x: torch.Tensor, batch: int, repeats: int) -> Outcome:
    """Two batches timed (each compiled first), then one batch of new images and policies."""
    timed, new = x[:2 * batch], x[2 * batch:]
    start = time.perf_counter()
    for b in torch.split(timed, batch):
        out = run(compiled, b)
    synchronize(x.device)
    compiling = time.perf_counter() - start
    eager = run(resnet, timed[batch:])
    diff, scale = (out - eager).abs().max().item(), eager.abs().max().item()
    seconds = seconds_per_image({"eager": lambda b: run(resnet, b), "compiled": lambda b: run(compiled, b)},
                                timed, batch, repeats)
    start = time.perf_counter()
    run(compiled, new)
    synchronize(x.device)
    fresh = time.perf_counter() - start
    return Outcome(f"time ratio to eager **{seconds['compiled'] / seconds['eager']:.2f}** once compiled "
                   f"({1000 * seconds['eager']:.3f} → {1000 * seconds['compiled']:.3f} ms/img); compiling the first "
                   f"2 batches {compiling:.0f} s; a batch of new images and policies {fresh:.2f} s (eager "
                   f"{batch * seconds['eager']:.3f} s); logits: max |Δ| {diff:.1e} (|logits| ≤ {scale:.3g})")
