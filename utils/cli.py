"""Command-line plumbing: the argument parser and its value types, the shared
flag groups, and running a script's ``main`` from the command line (an
expected failure is one line and exit status 2)."""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable, Sequence

from models import CONFIGS, POLICY_SOURCES

from .errors import BlockDropError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default unless it is None or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


# A negative number as a user types it: -1, -0.5, -.5, -1e-7, -1.5E+3, -inf, -nan (the flag's type decides
# whether it is taken); argparse would read the exponent forms as flags.
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr and exit status 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = NEGATIVE_NUMBER  # argparse's own reads -1e-7 as a flag


    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)

    def parse_args(self, args=None, namespace=None):
        """The flags, and in ``_given`` the names of those given on the command
        line (argparse leaves a preset attribute alone when a flag is absent)."""
        parsed = super().parse_args(args, namespace)
        probe = argparse.Namespace(**dict.fromkeys(vars(parsed), _ABSENT))
        super().parse_args(args, probe)
        parsed._given = frozenset(name for name, value in vars(probe).items() if value is not _ABSENT)
        return parsed


_ABSENT = object()


# --------------------------------------------------------------------------
# value types: argparse turns their ValueError into one line naming the flag
# --------------------------------------------------------------------------
def _bounded(kind: type, low: float | None = None, high: float | None = None, what: str = "") -> Callable:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text} is not {what}")
        return value

    parse.__name__ = kind.__name__
    return parse


positive_int = _bounded(int, 1, what="at least 1")
positive_float = _bounded(float, 1e-300, what="a positive number")
nonnegative_int = _bounded(int, 0, what="0 or more")
finite_float = _bounded(float)
alpha_float = _bounded(float, 0.5, 1.0, what="in [0.5, 1]")


def add_model_flag(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--model", default=default, choices=list(CONFIGS), metavar="MODEL",
                        help=f"R<depth>_<dataset>, one of: {', '.join(CONFIGS)}")


def add_subset_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train_subset", type=positive_int, default=None, metavar="N",
                        help="train on N of the training images, as many of each class, the same N for every "
                             "seed and script (default: all); the test set stays whole")


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present)")


def add_training_flags(parser: argparse.ArgumentParser, *, lr: float, epoch_step: int, max_epochs: int,
                       penalty: float, batch_size: int = 256) -> None:
    """The training flags of both phases (SPEC sections 4 and 5) with their defaults, plus the new ones;
    the curriculum's own are ``add_curriculum_flags``'s."""
    p = parser
    p.add_argument("--lr", type=positive_float, default=lr, help="learning rate")
    p.add_argument("--wd", type=finite_float, default=0.0, help="weight decay")
    add_model_flag(p, "R110_C10")
    p.add_argument("--data_dir", default="data/", help="data set folder")
    add_subset_flag(p)
    p.add_argument("--load", default=None, help="checkpoint to resume from (its epoch + 1 is the first)")
    p.add_argument("--cv_dir", default="cv/tmp/", help="folder for checkpoints and logs")
    p.add_argument("--batch_size", type=positive_int, default=batch_size, help="batch size")
    p.add_argument("--epoch_step", type=positive_int, default=epoch_step, help="epochs between learning-rate decays")
    p.add_argument("--max_epochs", type=nonnegative_int, default=max_epochs, help="epochs to run after the first")
    p.add_argument("--lr_decay_ratio", type=finite_float, default=0.1, help="learning-rate decay factor")
    p.add_argument("--parallel", action="store_true", default=False,
                   help="use every visible GPU of this machine with nn.DataParallel, as the original did "
                        "(torchrun with DistributedDataParallel is the faster way: see README)")
    p.add_argument("--penalty", type=finite_float, default=penalty, help="reward of a wrong prediction (gamma)")
    p.add_argument("--alpha", type=alpha_float, default=0.8, help="probability bound for exploration, in [0.5, 1]")
    add_device_flag(p)
    p.add_argument("--seed", type=int, default=None, help="random seed (default: not seeded)")
    p.add_argument("--workers", type=nonnegative_int, default=4, help="data loader workers")
    p.add_argument("--test_every", type=positive_int, default=10, help="evaluate and checkpoint every N epochs")
    p.add_argument("--base", default=None,
                   help="pretrained base ResNet (default: the one a --load or --pretrained checkpoint records, "
                        "else the configuration's file under cv/pretrained/ in the working directory)")
    add_throughput_flags(p)
    add_device_data_flag(p)
    add_run_folder_flags(p, resumable="--max_epochs (counted from the run's first epoch), --workers, --device, "
                                      "--parallel, --amp and --memory_format")


def add_curriculum_flags(parser: argparse.ArgumentParser) -> None:
    """``cl_training.py``'s own flags (``finetune.py`` has neither, as in the original)."""
    parser.add_argument("--beta", type=finite_float, default=1e-1, help="entropy bonus weight")
    parser.add_argument("--cl_step", type=positive_int, default=1, help="blocks handed to the policy per epoch")


def add_run_folder_flags(parser: argparse.ArgumentParser, resumable: str) -> None:
    """``--resume`` and ``--restart`` of a training script; ``resumable`` names the flags that may change."""
    parser.add_argument("--resume", action="store_true",
                        help=f"continue the run in --cv_dir from its newest complete state, with its arguments; "
                             f"only {resumable} may be given anew")
    parser.add_argument("--restart", action="store_true",
                        help="start a new run in a --cv_dir that holds one; the earlier run's files are moved to "
                             "<cv_dir>/earlier-<time>/")


def add_policy_flags(parser: argparse.ArgumentParser, what: str, seed: bool = False) -> None:
    """``--policy`` and ``--k``: the paper's heuristic baselines in the policy network's place."""
    parser.add_argument("--policy", choices=POLICY_SOURCES, default=None,
                        help=f"learned: the policy network, when not given; firstk: the first --k blocks for every "
                             f"image; randomk: --k blocks drawn uniformly at random per image; distributek: --k "
                             f"blocks spread evenly over the stages, the first of each stage (the deepest stages get "
                             f"the extra blocks when --k does not divide); {what}")
    parser.add_argument("--k", type=int, default=None,
                        help="blocks kept by --policy firstk, randomk or distributek (1 to the model's blocks)")
    if seed:
        parser.add_argument("--seed", type=int, default=0, help="seed of --policy randomk's draws")


def add_throughput_flags(parser: argparse.ArgumentParser) -> None:
    """Settings for speed: --amp (on CUDA and on the CPU) and the memory format."""
    parser.add_argument("--amp", action="store_true",
                        help="mixed precision: bfloat16 autocast, on CUDA (float16 with a gradient scaler where the "
                             "GPU has no bfloat16) and on the CPU; the policy's probabilities, samples and "
                             "log-likelihoods stay float32. A run with --amp draws other numbers than a float32 run")
    parser.add_argument("--memory_format", choices=["auto", "channels_last", "contiguous"], default="auto",
                        help="the networks' memory format; auto: channels-last on CUDA, contiguous on the CPU")


def add_device_data_flag(parser: argparse.ArgumentParser) -> None:
    """``--device_data``: the data set on the training device (``utils.device_data``)."""
    parser.add_argument("--device_data", action="store_true",
                        help="hold the data set on the training device as one uint8 tensor and shuffle, crop, flip "
                             "and normalise whole batches there: no DataLoader, no workers (not for ImageNet's "
                             "image folders). It draws other random numbers than the original's DataLoader path, "
                             "so a seeded run no longer follows the original's; it cannot change when a run is "
                             "resumed")


# --------------------------------------------------------------------------
# running a script from the command line
# --------------------------------------------------------------------------
def run_cli(main: Callable[[argparse.Namespace], object], parser: argparse.ArgumentParser,
            argv: Sequence[str] | None = None) -> None:
    """Parse flags, run ``main`` and turn a BlockDropError into one line + exit 2."""
    args = parser.parse_args(argv)
    try:
        main(args)
    except BlockDropError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as exc:  # disk full, permission denied, ...: the path and the reason
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{parser.prog}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        sys.exit(2)

