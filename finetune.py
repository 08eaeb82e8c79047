"""Joint finetuning of the policy network and the ResNet (BlockDrop, SPEC section 5).

    python finetune.py --model R110_C10 --lr 1e-4 --penalty -10 --pretrained cv/R110_C10_cl/ckpt_E_5300_A_0.754_R_2.22E-01_S_20.10_#_7787.t7 --batch_size 256 --max_epochs 2000 --cv_dir cv/R110_C10_ft_-10/

All blocks are decided by the policy; the loss adds the ResNet's cross-entropy
under the sampled policy. ``--penalty`` trades accuracy for speed.
"""

from __future__ import annotations

from training import fit
from utils.cli import ArgumentParser, add_policy_flags, add_training_flags, run_cli
from utils.config import PHASE_DEFAULTS, TrainConfig


def get_args_parser() -> ArgumentParser:
    p = ArgumentParser(prog="finetune.py", description="BlockDrop joint finetuning")
    add_training_flags(p, **PHASE_DEFAULTS[True])
    p.add_argument("--pretrained", default=None, help="curriculum checkpoint whose agent to start from")
    p.add_argument("--per_image", action="store_true",
                   help="train with per-image execution: each block runs only on the images that keep it, so a "
                        "step costs what the kept blocks cost, and its BatchNorm statistics come from those "
                        "images alone (default: the paper's masked form, where every block that any image "
                        "keeps runs on the whole batch)")
    add_policy_flags(p, "the ResNet finetuned under a fixed baseline policy instead of the policy network: only "
                        "the ResNet trains, on the cross-entropy (same epochs, learning rate, batch and schedule)")
    return p


def main(args) -> dict:
    return fit(TrainConfig.from_args(args, joint=True))


if __name__ == "__main__":
    run_cli(main, get_args_parser())
