"""BlockDrop's training runs: ``fit(cfg)``, the driver of ``cl_training.py``
(curriculum learning, the ResNet frozen) and ``finetune.py`` (joint
finetuning), in three named steps: set up the run (its folder, a resumed
state, the networks, data and optimizer), run the engine's loop, and return
the last checkpoint. ``RLPhase`` is what such a run does in an epoch."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch.optim.lr_scheduler import LambdaLR

from engine import Phase, Resumed, Run, begin_run, open_run_folder, restored_schedule, train_epochs
from evaluation import evaluate, summarize
from models import build_agent, build_resnet, get_config
from rl import RLConfig, decided_blocks, train_step
from utils.bases import load_base_for, load_policy_start, load_weights
from utils.checkpoints import load_blockdrop_checkpoint, policy_source
from utils.config import RESUMABLE, TrainConfig
from utils.data import get_datasets
from utils.device_data import check_device_data
from utils.distributed import Processes, main_print, setup, teardown
from utils.errors import BlockDropError
from utils.runstate import FolderLock, checkpoint_name, named_checkpoints
from utils.runtime import amp_dtype, channels_layout, data_loaders, grad_scaler, parallelize, seed_everything

# --------------------------------------------------------------------------
# BlockDrop's phase: curriculum learning or joint finetuning
# --------------------------------------------------------------------------
SAVED_METRICS = ("reward", "acc", "blocks", "blocks_std", "unique")  # saved in every checkpoint, beside the networks
TB_NAMES = {"acc": "accuracy", "reward": "reward", "blocks": "sparsity",
            "blocks_std": "variance", "unique": "unique_policies"}


def _metrics_text(stats: dict) -> str:
    return (f"A: {stats['acc']:.3f} | R: {stats['reward']:.2E} | S: {stats['blocks']:.3f} | "
            f"V: {stats['blocks_std']:.3f} | #: {stats['unique']}")


def log_line(epoch: int, stats: dict) -> str:
    """The train line ``E: %d | A: %.3f | R: %.2E | S: %.3f | V: %.3f | #: %d`` (SPEC section 6)."""
    return f"E: {epoch} | {_metrics_text(stats)}"


def test_line(stats: dict) -> str:
    """The test line ``TS - A: %.3f | R: %.2E | S: %.3f | V: %.3f | #: %d``: as in the original, no epoch."""
    return f"TS - {_metrics_text(stats)}"


class RLPhase(Phase):
    """Curriculum learning (``cfg.joint`` False: the ResNet frozen, only the
    policy learns, the last blocks first) or joint finetuning (both networks,
    every block, the cross-entropy added). ``nets`` are on the device already."""

    def __init__(self, cfg, nets, procs: Processes, testloader, layout, precision, optimizer, schedule):
        self.cfg, self.procs, self.testloader, self.layout = cfg, procs, testloader, layout
        self.optimizer, self.schedule = optimizer, schedule
        self.models = {"agent": nets.agent, **({"resnet": nets.resnet} if cfg.joint else {})}
        learnable = getattr(nets.agent, "learnable", True)  # FirstK and RandomK have no weights
        trained = ([nets.agent] if learnable else []) + ([nets.resnet] if cfg.joint else [])
        frozen = ([] if learnable else [nets.agent]) + ([] if cfg.joint else [nets.resnet])
        wrapped = dict(zip(map(id, trained + frozen), parallelize(procs, cfg.parallel, trained, frozen)))
        self.agent, self.resnet = wrapped[id(nets.agent)], wrapped[id(nets.resnet)]
        self.rl = RLConfig(alpha=cfg.alpha, penalty=cfg.penalty, beta=cfg.beta, joint=cfg.joint,
                           execution="per_image" if cfg.per_image else None, world_size=procs.world_size,
                           amp=precision)
        self.scaler = grad_scaler(precision)
        self.num_blocks = nets.agent.num_blocks
        self.decided = self.num_blocks

    def begin_epoch(self, epoch: int) -> None:
        if epoch % self.cfg.epoch_step == 0:
            main_print(f"# setting learning_rate to {self.optimizer.param_groups[0]['lr']:.2E}")
        if not self.cfg.joint:
            self.decided = decided_blocks(epoch, self.num_blocks, self.cfg.cl_step)
            main_print(f"training the last {self.decided} blocks ...")
        self.agent.train()
        self.resnet.train(self.cfg.joint)  # curriculum: the ResNet stays in eval mode, frozen

    def train_batch(self, inputs, targets):
        out = train_step(self.agent, self.resnet, inputs, targets, self.optimizer, self.decided, self.rl, self.scaler)
        return {"reward": out["reward"], "correct": out["correct"], "policy": out["policy"]}

    def train_metrics(self, rows):
        return summarize(rows["correct"], rows["reward"], rows["policy"])

    def tested(self, epoch: int) -> bool:
        return epoch % self.cfg.test_every == 0

    def evaluate(self, epoch: int) -> dict:
        return evaluate(self.agent, self.resnet, self.testloader, self.procs.device, self.decided, self.cfg.penalty,
                        procs=self.procs, amp=self.rl.amp, layout=self.layout)

    def log(self, logger, epoch, train=None, test=None):
        for split, stats in (("train", train), ("test", test)):
            if stats is not None:
                line = log_line(epoch, stats) if split == "train" else test_line(stats)
                logger.log(epoch, line, {f"{split}_{name}": stats[key] for key, name in TB_NAMES.items()},
                           {"split": split, "epoch": epoch, **stats})

    def saved_metrics(self, metrics: dict) -> dict:
        return {k: metrics[k] for k in SAVED_METRICS if k in metrics}  # none before the first epoch

    def checkpoint_name(self, epoch: int, metrics: dict) -> str:
        return checkpoint_name(epoch, metrics["acc"], metrics["reward"], metrics["blocks"], metrics["unique"])


# --------------------------------------------------------------------------
# set-up
# --------------------------------------------------------------------------
def open_folder(cfg: TrainConfig, procs: Processes, stack: ExitStack) -> tuple[TrainConfig, Resumed | None,
                                                                            FolderLock | None]:
    """The run folder held for this run (``engine.open_run_folder``) and, with
    ``--resume``, the newest saved state and the run's own flags, checked."""
    cv_dir = Path(cfg.cv_dir)
    continuing = bool(cfg.load) and Path(cfg.load).resolve().parent == cv_dir.resolve()
    resumed, lock = open_run_folder(cv_dir, "finetune.py" if cfg.joint else "cl_training.py", procs, stack,
                                    cfg.resume, cfg.restart, continuing)
    if resumed:
        state = resumed.state
        cfg = cfg.with_flags(state.continued_flags(cfg.flags(), cfg.given, RESUMABLE, resumed.path))
        check_flags(cfg, files=False)  # against the run's own flags: its model and policy
        resumed.announce(cv_dir)
    return cfg, resumed, lock


def check_flags(cfg: TrainConfig, files: bool = True) -> None:
    """Flags that cannot go together, and (``files``) files that are not there,
    refused before anything on disk changes."""
    for flag in ("load", "pretrained", "base") if files else ():
        path = getattr(cfg, flag)
        if path and not Path(path).is_file():
            raise BlockDropError(f"--{flag} {path}: no such file")
    if cfg.policy != "learned" and cfg.pretrained:
        raise BlockDropError(f"--pretrained starts a policy network, and --policy {cfg.policy} uses none: "
                             "give one of the two")
    policy_source(get_config(cfg.model), cfg.policy, cfg.k)  # --k given where it applies, and in range


@dataclass
class Networks:
    agent: nn.Module
    resnet: nn.Module
    start_epoch: int = 0
    optimizer_state: dict | None = None  # the saved optimizer of the run or checkpoint continued
    source: Path | None = None  # that run's state or checkpoint (--resume or --load)
    policy_start: str = ""
    base: dict | None = None  # the base the ResNet was trained from: path and SHA-256


@dataclass
class Continued:
    """What a run continued (``--resume``'s state or ``--load``'s checkpoint) gives the networks."""

    path: Path
    epoch: int  # its last epoch (-1: none)
    optimizer: dict | None
    base: dict | None  # the base it records
    has_resnet: bool  # its finetuned ResNet was loaded (finetuning only)


def build_networks(cfg: TrainConfig, resumed: Resumed | None = None) -> Networks:
    """The ResNet and the agent, built in the original's order (so that a seeded
    run draws the same random numbers), then filled: from the run continued
    (--resume's state or --load's checkpoint: agent, and ResNet when finetuned),
    the base (the one that run records, else --base or the default),
    --pretrained's agent, or the agent's own start."""
    config = get_config(cfg.model)
    resnet, agent = build_resnet(config), build_agent(config)
    if cfg.policy != "learned":  # a baseline in the policy network's place, which was built for the random stream
        agent = policy_source(config, cfg.policy, cfg.k, cfg.seed or 0)
    nets = Networks(agent, resnet)
    continued = from_state(nets, resumed, config, cfg.joint) if resumed else from_checkpoint(nets, cfg, config)
    if continued:
        nets.start_epoch, nets.optimizer_state, nets.source = continued.epoch + 1, continued.optimizer, continued.path
        main_print(f"loaded agent from {continued.path}")
    pretrained = None
    if cfg.joint and cfg.pretrained and continued is None:
        pretrained = load_blockdrop_checkpoint(Path(cfg.pretrained), config.name, agent, None)
        main_print(f"loaded pretrained model from {cfg.pretrained}")
    if continued and continued.has_resnet:
        nets.base = continued.base  # the finetuned ResNet is in the checkpoint; its base stays on record
    elif continued:
        nets.base = load_base_for(resnet, config, cfg.base, continued.base, continued.path)
    else:
        nets.base = load_base_for(resnet, config, cfg.base, (pretrained or {}).get("base"), cfg.pretrained)
    if resumed:
        nets.policy_start = resumed.state.args.get("policy_start", "")
    elif cfg.load or pretrained:
        nets.policy_start = f"agent of {cfg.load or cfg.pretrained}"
    else:
        learnable = getattr(agent, "learnable", True)
        nets.policy_start = load_policy_start(agent) if learnable and config.arch != "cifar" else agent.start
    return nets


def from_state(nets: Networks, resumed: Resumed, config, joint: bool) -> Continued:
    """The networks as the resumed run saved them, read from its state as it is
    (a fixed policy's state too: RandomK's draws go on where they stopped)."""
    state = resumed.state
    if getattr(nets.agent, "learnable", True):
        load_weights(nets.agent, state.networks["agent"], resumed.path, f"{config.name} agent")
    else:
        nets.agent.load_state_dict(state.networks["agent"])
    has_resnet = joint and "resnet" in state.networks
    if has_resnet:
        load_weights(nets.resnet, state.networks["resnet"], resumed.path, f"{config.name} ResNet")
    return Continued(resumed.path, state.epoch, state.optimizer, state.base, has_resnet)


def from_checkpoint(nets: Networks, cfg: TrainConfig, config) -> Continued | None:
    """The networks of ``--load``'s checkpoint (the ResNet only when finetuning), or None without one."""
    if not cfg.load:
        return None
    path = Path(cfg.load)
    ckpt = load_blockdrop_checkpoint(path, config.name, nets.agent, nets.resnet if cfg.joint else None)
    optimizer = ckpt.get("optimizer") if isinstance(ckpt.get("optimizer"), dict) else None
    return Continued(path, int(ckpt.get("epoch", -1)), optimizer, ckpt.get("base"), cfg.joint and ckpt["has_resnet"])


def make_optimizer(cfg: TrainConfig, nets: Networks) -> tuple[torch.optim.Optimizer, LambdaLR]:
    """Adam over the agent (and the ResNet when finetuning), its state restored
    from the run continued, and the original's schedule
    ``lr * lr_decay_ratio ** (epoch // epoch_step)`` from the epoch the run starts."""
    params = list(nets.agent.parameters()) + (list(nets.resnet.parameters()) if cfg.joint else [])
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.wd)
    schedule = restored_schedule(optimizer, nets.optimizer_state, nets.source, cfg.lr,
                                 lambda epoch: cfg.lr_decay_ratio ** (epoch // cfg.epoch_step), nets.start_epoch - 1)
    return optimizer, schedule


# --------------------------------------------------------------------------
# the driver
# --------------------------------------------------------------------------
def fit(cfg: TrainConfig, datasets: tuple | None = None) -> dict:
    """Curriculum learning or joint finetuning, as ``cfg`` says. After every
    epoch the run's state is saved as ``cv_dir/last.t7``; at every
    ``test_every``-th epoch and the last one the test set is evaluated and
    ``ckpt_E_...t7`` written. Returns the last evaluation and checkpoint.
    ``datasets`` (train, test) replaces the configuration's data sets (for
    experiments on data of one's own). Under torchrun every process trains its
    share and only the main one writes."""
    procs = setup(cfg.device)
    try:
        with ExitStack() as stack:
            if not cfg.resume:  # the flags and data checked before the folder is touched
                check_flags(cfg)
                datasets = datasets or get_datasets(get_config(cfg.model), cfg.data_dir, cfg.train_subset)
                if cfg.device_data:
                    check_device_data(*datasets)
            cfg, resumed, lock = open_folder(cfg, procs, stack)
            if resumed and resumed.state.epoch >= resumed.state.first_epoch + cfg.max_epochs:
                return already_complete(Path(cfg.cv_dir), resumed)
            run, phase, trainloader = set_up(cfg, resumed, datasets, procs)
            if lock:  # every check passed: an earlier run is set aside only now
                lock.begin()
            return train_epochs(begin_run(run, phase, fresh=resumed is None), phase, trainloader)
    finally:
        teardown(procs)


def already_complete(cv_dir: Path, resumed: Resumed) -> dict:
    """A resumed run with no epoch left: said in one line, nothing written; its
    last checkpoint, as a finished run returns it."""
    state = resumed.state
    main_print(f"the run in {cv_dir} is complete (its last epoch, {state.epoch}, is done): nothing to train")
    named = named_checkpoints(cv_dir, state.epoch)
    return {**state.metrics, "epoch": state.epoch, "checkpoint": str(named[0] if named else resumed.path)}


def set_up(cfg: TrainConfig, resumed: Resumed | None, datasets: tuple | None,
           procs: Processes) -> tuple[Run, RLPhase, object]:
    """Everything before the first epoch, in the order that keeps a seeded run
    on the original's random stream."""
    device = procs.device
    if cfg.penalty > 0:
        main_print(f"note: --penalty {cfg.penalty:g} is positive: a wrong prediction is then rewarded")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the original; the convolutions' shapes repeat
    seed_everything(cfg.seed)
    nets = build_networks(cfg, resumed)
    if procs.distributed and cfg.seed is not None:
        torch.manual_seed(cfg.seed + procs.rank)  # the same networks, then each process its own samples
    trainset, testset = datasets or get_datasets(get_config(cfg.model), cfg.data_dir, cfg.train_subset)
    trainloader, testloader = data_loaders(trainset, testset, procs, cfg.batch_size, cfg.workers, cfg.seed,
                                           device_data=cfg.device_data)
    layout = channels_layout(cfg.memory_format, device)
    nets.agent.to(device, memory_format=layout)
    nets.resnet.to(device, memory_format=layout)
    if not cfg.joint:
        nets.resnet.requires_grad_(False)
    optimizer, schedule = make_optimizer(cfg, nets)
    phase = RLPhase(cfg, nets, procs, testloader, layout, amp_dtype(cfg.amp, device), optimizer, schedule)
    first_epoch = resumed.state.first_epoch if resumed else nets.start_epoch
    run = Run(Path(cfg.cv_dir), procs, {**cfg.flags(), "policy_start": nets.policy_start,
                                        "processes": procs.world_size},
              first_epoch, nets.start_epoch, first_epoch + cfg.max_epochs, nets.base)
    if resumed:  # the random streams go on where the run left them
        resumed.state.restore_rng(procs.rank, procs.world_size)
    return run, phase, trainloader
