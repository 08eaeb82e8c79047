"""The accuracy-against-FLOPs trade-off: one finetuned model per penalty.

    python sweep.py --model R32_Digits --pretrained cv/demo/cl/ckpt_E_60_...t7 --penalties -1 -2 -5 -10 --cv_dir cv/demo/sweep

Each penalty (the paper's gamma) is finetuned from the same curriculum
checkpoint with ``finetune.py`` into ``<cv_dir>/penalty_<p>/`` and profiled
with ``test.py``; the full ResNet is profiled once. Everything lands in
``<cv_dir>/sweep.json`` and the curve in ``<cv_dir>/tradeoff.png``. A penalty
whose ``run.json`` records the same settings (the same curriculum checkpoint and
base, by content, and the same flags) is not finetuned again, so an interrupted
sweep resumes, and a finetuning run that was cut short goes on from its last
saved state; any other settings finetune it afresh (the earlier run set aside).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from experiment import check_distinct_penalties
from models import build_agent, get_config
from utils.bases import find_default_base
from utils.checkpoints import load_blockdrop_checkpoint
from utils.cli import (
    ArgumentParser,
    add_device_flag,
    add_model_flag,
    finite_float,
    nonnegative_int,
    positive_float,
    positive_int,
    run_cli,
)
from utils.errors import BlockDropError
from utils.files import writable_folder, write_json
from utils.pipeline import cached, content_sha256, run_script, run_training
from utils.plots import save_figure, tradeoff_figure


def get_args_parser() -> ArgumentParser:
    p = ArgumentParser(prog="sweep.py", description="finetune and profile one BlockDrop model per penalty")
    add_model_flag(p, "R32_Digits")
    p.add_argument("--pretrained", required=True, help="curriculum checkpoint every run starts from")
    p.add_argument("--penalties", type=finite_float, nargs="+", default=[-1.0, -2.0, -5.0, -10.0],
                   help="penalties (gamma) to finetune with")
    p.add_argument("--cv_dir", default="cv/sweep/", help="output folder")
    p.add_argument("--data_dir", default="data/", help="data set folder")
    p.add_argument("--base", default=None,
                   help="pretrained base ResNet (default: the configuration's file under cv/pretrained/)")
    p.add_argument("--max_epochs", type=nonnegative_int, default=2000, help="finetuning epochs after the first")
    p.add_argument("--lr", type=positive_float, default=1e-4, help="finetuning learning rate")
    p.add_argument("--batch_size", type=positive_int, default=256, help="batch size")
    p.add_argument("--test_every", type=positive_int, default=10, help="evaluate and checkpoint every N epochs")
    add_device_flag(p)
    p.add_argument("--seed", type=int, default=None, help="random seed (default: not seeded)")
    p.add_argument("--workers", type=nonnegative_int, default=4, help="data loader workers")
    p.add_argument("--limit", type=positive_int, default=None, help="profile only the first N test images")
    p.add_argument("--profile_batch_size", type=positive_int, default=1,
                   help="test.py's --batch_size: the figures are those of the one-image profile at any size; "
                        "the measured time is at this batch size")
    return p


def penalty_dir(cv_dir: Path, penalty: float) -> Path:
    return cv_dir / f"penalty_{penalty:g}"


def base_sha256(args: argparse.Namespace) -> str | None:
    """The content of the base ResNet the runs start from: ``--base`` or the default one."""
    return content_sha256(args.base or find_default_base(get_config(args.model)))


PROFILE_ONLY = ("limit", "profile_batch_size")  # settings that change the profile, not the finetuned model


def run_settings(args: argparse.Namespace, penalty: float, starts: dict) -> dict:
    """What decides a finetuned model: the files it starts from (``starts``: their
    SHA-256 digests) and the flags."""
    return {"model": args.model, "penalty": penalty, **starts, "max_epochs": args.max_epochs, "lr": args.lr,
            "batch_size": args.batch_size, "test_every": args.test_every, "seed": args.seed,
            "data_dir": args.data_dir, "limit": args.limit, "profile_batch_size": args.profile_batch_size}


def run_test_script(args: argparse.Namespace, out: Path, load: Path | None, base: str | None) -> dict:
    """test.py run on a checkpoint (``load``) or the full ResNet of ``base``, its metrics written to ``out``."""
    argv = ["--model", args.model, "--data_dir", args.data_dir, "--json", str(out)]
    argv += ["--load", str(load)] if load else []
    argv += ["--base", base] if base else []
    argv += ["--device", args.device] if args.device else []
    argv += ["--limit", str(args.limit)] if args.limit else []
    argv += ["--batch_size", str(args.profile_batch_size)]
    run_script("test.py", argv)
    return json.loads(out.read_text())


def finetune_and_profile(args: argparse.Namespace, penalty: float, folder: Path, settings: dict) -> dict:
    """The penalty's model finetuned in ``folder`` (a run of these ``settings``
    that was cut short there is resumed; a run of others is set aside), then profiled."""
    argv = ["--model", args.model, "--data_dir", args.data_dir, "--pretrained", args.pretrained,
            "--penalty", str(penalty), "--cv_dir", str(folder), "--max_epochs", str(args.max_epochs),
            "--lr", str(args.lr), "--batch_size", str(args.batch_size),
            "--test_every", str(args.test_every), "--workers", str(args.workers)]
    argv += ["--base", args.base] if args.base else []
    argv += ["--device", args.device] if args.device else []
    argv += ["--seed", str(args.seed)] if args.seed is not None else []
    trained = {k: v for k, v in settings.items() if k not in PROFILE_ONLY}
    last = run_training(folder, "finetune.py", argv, trained)
    return run_test_script(args, folder / "test.json", Path(last["checkpoint"]), None)


def check_inputs(args: argparse.Namespace) -> None:
    """Everything that can be checked before any file is written: one folder per
    penalty, the starting files there and readable."""
    check_distinct_penalties(args.penalties)  # penalty_dir names each by its value to six digits
    if args.base and not Path(args.base).is_file():
        raise BlockDropError(f"--base {args.base}: no such file")
    config = get_config(args.model)
    load_blockdrop_checkpoint(Path(args.pretrained), config.name, build_agent(config))


def run_sweep(args: argparse.Namespace) -> dict:
    check_inputs(args)
    cv_dir = writable_folder(Path(args.cv_dir), "--cv_dir", create=False)  # made by its first file: a refusal
    # of a file found bad later (a --base that is no network) leaves no empty folder behind
    starts = {"pretrained_sha256": content_sha256(args.pretrained), "base_sha256": base_sha256(args)}
    full = cached(cv_dir / "full_run.json", {"model": args.model, "base_sha256": starts["base_sha256"],
                                              "data_dir": args.data_dir, "limit": args.limit,
                                              "profile_batch_size": args.profile_batch_size},
                  lambda: run_test_script(args, cv_dir / "full.json", None, args.base))
    runs = []
    for penalty in args.penalties:
        folder = penalty_dir(cv_dir, penalty)
        settings = run_settings(args, penalty, starts)
        runs.append({"penalty": penalty, **cached(folder / "run.json", settings,
                                                  lambda p=penalty, f=folder, s=settings:
                                                  finetune_and_profile(args, p, f, s))})
    result = {"model": args.model, "pretrained": args.pretrained, "full": full, "runs": runs}
    write_json(cv_dir / "sweep.json", result)
    save_figure(tradeoff_figure(full, runs), cv_dir / "tradeoff.png")
    print(f"sweep written to {cv_dir / 'sweep.json'} and {cv_dir / 'tradeoff.png'}")
    return result


def main(args: argparse.Namespace) -> dict:
    return run_sweep(args)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
