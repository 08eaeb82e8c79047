"""The CUDA paths, checked in one command, and how fast they are:

    python benchmarks/gpu_check.py                      (make gpu-check; a few minutes on one GPU)
    python benchmarks/gpu_check.py --device cpu --quick (under a minute on a small CPU: the code paths)

- the first CUDA device against the CPU, on the same weights, inputs and
  sampled policies, in float32 with TF32 off: a forward of every configuration
  in each execution mode (full, masked, per_image, kept) and the policy
  network's, one curriculum step and one finetuning step (loss and gradients);
  the tolerance widens with the CPU's own float32 error, measured against the
  CPU in float64 in the same run;
- 20 training steps of ResNet-32 and ResNet-101 on a fixed batch under
  ``--amp`` (bfloat16 autocast where the GPU has it, else float16 with a
  gradient scaler; ResNet-32 in float16 with the scaler too) in channels-last:
  every loss finite, the cross-entropy falls;
- ``utils.runtime.data_loaders``: pinned batches, workers that persist across epochs;
- two processes under torchrun (NCCL where two GPUs are visible, gloo on CUDA
  tensors otherwise): after two finetuning steps their parameters are equal;
- time ratios of per-image execution and of the masked form to the full
  network, as ``benchmarks/speed.py`` measures them, images per second of
  training steps, and of a pretraining epoch through the DataLoader against
  ``--device_data`` (the data set held on the GPU, augmented there);
- ``torch.compile`` of the full network and of the per-image forward, where it
  works (in a child process with a time limit; ``--no_compile`` skips it).

Each check is guarded: a failure is a FAILED row with its first line and the
others go on. One table is printed and written as markdown (``--out``); the
exit status is 1 when a check failed. With ``--device cpu`` the comparisons
compare the CPU in channels-last with the CPU in contiguous layout: they check
the code paths and determinism, not a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's modules
sys.path.insert(0, str(Path(__file__).resolve().parent))  # speed.py and this check's modules

from gpu_check_numerics import (
    Outcome,
    amp_choice,
    amp_training,
    first_line,
    forward_agreement,
    loader_check,
    one_line_reason,
    precision_name,
    step_agreement,
    tolerance_explained,
    torchrun_check,
)
from gpu_check_speed import COMPILED, compile_speed, data_path_speed, inference_speed, step_speed
from models import CONFIGS
from utils.cli import ArgumentParser
from utils.distributed import choose_device
from utils.errors import BlockDropError

SECTIONS = ["forward", "steps", "amp", "loader", "torchrun", "speed", "compile"]
TOTAL_SECONDS = 450  # torch.compile, the last section, gets at most what is left of this


def get_args_parser() -> ArgumentParser:
    p = ArgumentParser(prog="benchmarks/gpu_check.py", description="the CUDA paths, checked in one command")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: the first CUDA device)")
    p.add_argument("--out", default="benchmarks/gpu_check.md", help="markdown file for the table")
    p.add_argument("--quick", action="store_true",
                   help="small batches and few steps, no ResNet-101 training, no torch.compile unless --compile")
    p.add_argument("--no_compile", action="store_true", help="skip torch.compile")
    p.add_argument("--compile", action="store_true", help="try torch.compile in --quick mode too")
    p.add_argument("--compile_timeout", type=int, default=180,
                   help="at most this many seconds for torch.compile (unless given, also no more than what is "
                        "left of 8 minutes)")
    p.add_argument("--only", nargs="+", choices=SECTIONS, metavar="SECTION",
                   help=f"run these sections only: {', '.join(SECTIONS)}")
    p.add_argument("--rows_json", default=None, help=argparse.SUPPRESS)  # a child process's rows, for its parent
    return p


# --------------------------------------------------------------------------
# the report: guarded checks, one table
# --------------------------------------------------------------------------
@dataclass
class Row:
    section: str
    check: str
    measured: str
    criterion: str = ""
    status: str = "measured"


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    start: float = field(default_factory=time.perf_counter)

    def say(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.start:5.0f} s] {text}", flush=True)

    def check(self, section: str, name: str, run) -> None:
        """Runs ``run()``, an Outcome or a list of (row name, Outcome), and
        records its rows; an exception is one FAILED row with its first line."""
        self.say(f"{section}: {name} ...")
        try:
            result = run()
        except Exception as exc:  # a failing check is recorded, and the others go on
            result = Outcome(first_line(exc), ok=False)
        for label, outcome in [(name, result)] if isinstance(result, Outcome) else result:
            status = {True: "ok", False: "FAILED"}.get(outcome.ok, outcome.status or "measured")
            self.rows.append(Row(section, label, outcome.measured, outcome.criterion, status))
            if status == "FAILED":
                self.say(f"FAILED: {label}: {outcome.measured}")

    @property
    def failed(self) -> list[Row]:
        return [row for row in self.rows if row.status == "FAILED"]

    def table(self) -> str:
        lines = ["| section | check | measured | criterion | status |", "|---|---|---|---|---|"]
        for r in self.rows:
            status = f"**{r.status}**" if r.status == "FAILED" else r.status
            cells = [r.section, r.check, r.measured, r.criterion or "—", status]
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        return "\n".join(lines)


# --------------------------------------------------------------------------
# what runs, by mode
# --------------------------------------------------------------------------
# --quick: the paper's five configurations and the digits' (the shallower ones run the same code)
QUICK_FORWARD = ["R32_C10", "R110_C10", "R32_C100", "R110_C100", "R101_ImgNet", "R32_Digits"]


def plan(quick: bool) -> dict:
    """Batch sizes, steps and repeats: a few minutes on one GPU, or (quick) under a minute on a small CPU."""
    if quick:
        return {"forward_batch": {"cifar": 4, "imagenet": 2}, "forward_models": QUICK_FORWARD, "step_models": [("R32_C10", 4)],
                "amp": [("R32_C10", 16, 10)], "curriculum": ("R32_C10", 16, 10), "workers": 1,
                "speed": [("R32_C10", 1, 4), ("R32_C10", 16, 16), ("R110_C10", 1, 2), ("R101_ImgNet", 1, 1)],
                "step_speed": [("R32_C10", 16)], "repeats": 1, "compile": ("R32_C10", 16),
                "data_path": ("R8_Fashion", 128, 64, 1)}
    return {"forward_batch": {"cifar": 8, "imagenet": 4}, "forward_models": list(CONFIGS),
            "step_models": [("R32_C10", 8), ("R110_C10", 8), ("R101_ImgNet", 4)],
            "amp": [("R32_C10", 64, 20), ("R101_ImgNet", 16, 20)], "curriculum": ("R32_C10", 64, 20), "workers": 2,
            "speed": [(name, batch, max(batch, 32 if name != "R101_ImgNet" else 16))
                      for name, batches in (("R110_C10", (1, 64, 256)), ("R32_C10", (1, 64, 256)),
                                            ("R101_ImgNet", (1, 16, 64))) for batch in batches],
            "step_speed": [("R32_C10", 256), ("R110_C10", 256), ("R101_ImgNet", 64)], "repeats": 5,
            "compile": ("R32_C10", 64), "data_path": ("R32_Fashion", 16384, 256, 4)}


def run_sections(report: Report, args: argparse.Namespace, device: torch.device, sizes: dict) -> None:
    layout = torch.channels_last
    pair = f"{device.type} vs cpu" if device.type == "cuda" else "cpu vs cpu (no GPU)"
    dtype = amp_choice(device)
    for section in args.only or SECTIONS:
        if section == "forward":
            for name in sizes["forward_models"]:
                batch = sizes["forward_batch"][CONFIGS[name].arch]
                report.check(f"{pair}: forward", f"{name}, batch {batch}, eval",
                             lambda n=name, b=batch: forward_agreement(n, b, device, layout))
        elif section == "steps":
            for (name, batch), (phase, joint) in [(m, p) for m in sizes["step_models"]
                                                  for p in (("curriculum", False), ("finetuning", True))]:
                report.check(f"{pair}: training step", f"{name} {phase} step, batch {batch}",
                             lambda n=name, b=batch, j=joint: step_agreement(n, b, j, device, layout))
        elif section == "amp":
            amp_section(report, device, sizes, dtype)
        elif section == "loader":
            report.check("data loader", f"utils.runtime.data_loaders, {sizes['workers']} worker(s), two epochs",
                         lambda: loader_check(device, sizes["workers"], layout))
        elif section == "torchrun":
            report.check("torchrun", "2 processes, R32_C10, two finetuning steps of batch 4 each",
                         lambda: torchrun_check(device))
        elif section == "speed":
            speed_section(report, device, sizes, dtype)
        elif section == "compile":
            compile_section(report, args, device, sizes)


def amp_section(report: Report, device: torch.device, sizes: dict, dtype) -> None:
    """``--amp``'s precision (and on CUDA float16 with a gradient scaler too, which GPUs without bfloat16 run)."""
    layout, title = torch.channels_last, "training, --amp, channels-last"
    runs = [(name, batch, steps, dtype) for name, batch, steps in sizes["amp"]]
    if device.type == "cuda" and dtype != torch.float16:
        name, batch, steps = sizes["amp"][0]
        runs.append((name, batch, steps, torch.float16))
    for name, batch, steps, precision in runs:
        report.check(title, f"{name} finetuning, batch {batch}, {steps} steps, {precision_name(precision)}",
                     lambda n=name, b=batch, s=steps, p=precision: amp_training(n, b, s, True, p, device, layout))
    name, batch, steps = sizes["curriculum"]
    report.check(title, f"{name} curriculum, batch {batch}, {steps} steps, {precision_name(dtype)}",
                 lambda: amp_training(name, batch, steps, False, dtype, device, layout))


def speed_section(report: Report, device: torch.device, sizes: dict, dtype) -> None:
    layout, repeats = torch.channels_last, sizes["repeats"]
    for name, batch, images in sizes["speed"]:
        report.check("speed, eval, float32", f"{name}, batch {batch}",
                     lambda n=name, b=batch, i=images: inference_speed(n, b, i, repeats, device, layout))
    for precision in dict.fromkeys([None, dtype]):
        for name, batch in sizes["step_speed"]:
            report.check("speed, training", f"{name}, batch {batch}, {precision_name(precision)}",
                         lambda n=name, b=batch, p=precision: step_speed(n, b, p, repeats, device, layout))
    name, images, batch, workers = sizes["data_path"]
    report.check("speed, data path", f"{name} pretraining epoch, {images:,} images, batch {batch}",
                 lambda: data_path_speed(name, images, batch, repeats, device, layout, workers))


def compile_section(report: Report, args: argparse.Namespace, device: torch.device, sizes: dict) -> None:
    """In a child process that is killed after ``--compile_timeout`` seconds:
    a compilation can take minutes, and cannot be interrupted otherwise."""
    name, batch = sizes["compile"]
    checks = {form: f"{name} {form}, batch {batch}, eval" for form in COMPILED}
    if args.no_compile or (args.quick and not args.compile):
        why = "--no_compile" if args.no_compile else "--quick (--compile runs it)"
        report.rows.append(Row("torch.compile", f"{name}, batch {batch}", f"skipped: {why}", status="skipped"))
    elif args.rows_json:  # the child process: its rows are saved after each form, for a parent that may stop it
        for form, check in checks.items():
            report.check("torch.compile", check,
                         lambda f=form: compile_speed(name, batch, sizes["repeats"], device, torch.channels_last, f))
            Path(args.rows_json).write_text(json.dumps([asdict(row) for row in report.rows]))
    else:
        timeout = args.compile_timeout
        if "compile_timeout" not in getattr(args, "_given", ()):  # the default: what is left of the 8 minutes
            timeout = min(timeout, max(60, int(TOTAL_SECONDS - (time.perf_counter() - report.start))))
        report.say(f"torch.compile: {name}, batch {batch}, in a child process of at most {timeout} s ...")
        report.rows += compile_in_child(args, device, checks, timeout)


def compile_in_child(args: argparse.Namespace, device: torch.device, checks: dict[str, str], timeout: int) -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "rows.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--device", str(device), "--only", "compile",
                   "--compile", "--rows_json", str(saved), "--out", str(Path(tmp) / "compile.md"),
                   *(["--quick"] if args.quick else [])]
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 start_new_session=True)  # its compiler workers in its process group
        try:
            output, _ = child.communicate(timeout=timeout)
            late = None
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            output, _ = child.communicate()
            late = f"did not finish within {timeout} s (--compile_timeout)"
        rows = [Row(**row) for row in json.loads(saved.read_text())] if saved.is_file() else []
    done = {row.check for row in rows}
    for check in (c for c in checks.values() if c not in done):
        reason = late or f"the child process exited {child.returncode}: {one_line_reason(output)}"
        rows.append(Row("torch.compile", check, reason, status="not compiled" if late else "FAILED"))
    return rows


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------
def header(args: argparse.Namespace, device: torch.device, report: Report, seconds: float) -> str:
    dtype = amp_choice(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        where = (f"{device} ({torch.cuda.get_device_name(device)}, compute capability {major}.{minor}, "
                 f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})")
        pair = (f"{device} in channels-last against the CPU in contiguous layout, on the same weights, inputs "
                "and sampled policies (both devices draw their Bernoulli samples from one seeded CPU stream)")
    else:
        where = f"{device} (no GPU)"
        pair = ("no GPU: the CPU in channels-last against the CPU in contiguous layout, on the same weights, "
                "inputs and sampled policies: the code paths and determinism, not a GPU")
    checks = [row for row in report.rows if row.status in ("ok", "FAILED")]
    command = "python benchmarks/gpu_check.py" + (f" --device {args.device}" if args.device else "") + \
        (" --quick" if args.quick else "")
    return "\n\n".join([
        f"`{command}` on {where}, PyTorch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU thread(s): **{len(checks) - len(report.failed)} of {len(checks)} checks "
        f"passed** in {seconds:.0f} s.",
        f"Comparisons: {pair}; float32 with TF32 off (cuDNN convolutions and CUDA matmuls): "
        f"{tolerance_explained()}.",
        f"Training and speed: channels-last; on CUDA cudnn.benchmark on, as the training scripts set it; --amp: "
        f"{precision_name(dtype) if dtype else 'applies on CUDA only (float32 here)'}. Time ratios are to the full "
        "network at the same batch size, random per-image policies, eval mode, float32, each the fastest of "
        f"{plan(args.quick)['repeats']} interleaved pass(es) after a warm-up, CUDA synchronised (as "
        "benchmarks/speed.py measures them); training steps: the fastest of as many."])


def main(args: argparse.Namespace) -> Report:
    if args.device is None and not torch.cuda.is_available():
        raise BlockDropError("no CUDA GPU is available here; --device cpu --quick checks the code paths on the CPU "
                             "in under a minute (--device cpu alone runs the full check on the CPU, slowly)")
    device = choose_device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", device.index or 0)
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # as the training scripts run on CUDA
    report = Report()
    report.say(f"checking on {device}{' (quick)' if args.quick else ''}")
    run_sections(report, args, device, plan(args.quick))
    text = header(args, device, report, time.perf_counter() - report.start) + "\n\n" + report.table() + "\n"
    if args.rows_json:
        Path(args.rows_json).write_text(json.dumps([asdict(row) for row in report.rows]))
    print("\n" + text, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written: {out}")
    return report


def cli(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        report = main(args)
    except BlockDropError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(cli())
