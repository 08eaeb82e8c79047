"""The paper's experiment as data: what ``reproduce.py`` runs, and what it found.

- A ``Plan`` holds a configuration's settings: schedules, penalties, seeds, the
  shallower ResNets (``PLANS``, one entry per configuration).
- ``declare(plan, model)`` turns it into ``PlannedRun``s: a name (also the
  run's folder), the script, its flags, and through ``Ref``s in the flags what
  it starts from (a base, another run's checkpoint or block count). Adding a
  kind of run is one line there.
- ``Results`` is the one typed schema of the outcomes: ``reproduce.py`` writes
  it (``report.json``), ``claims.py`` reads it, the tests build it. A figure
  that was not measured is ``None`` in it, never a number.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field, fields, replace

from utils.errors import BlockDropError

HEURISTICS = ("firstk", "randomk", "distributek")  # the paper's Table 1 baselines, as --policy values
HEURISTIC_NAMES = {"firstk": "FirstK", "randomk": "RandomK", "distributek": "DistributeK"}


# --------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """The experiments of one configuration; the flags of reproduce.py change
    the fields of the same names."""

    shallower: tuple[str, ...]  # ResNets of the same recipe to compare with (claim 3)
    pretrain_flags: tuple[str, ...]  # pretrain.py's flags for the base and the shallower ResNets
    base_epochs: int | None  # pretrain.py's --epochs (None: the configuration's base as it is)
    cl_flags: tuple[str, ...]  # cl_training.py's flags
    cl_epochs: int  # its --max_epochs
    cl_step: int  # blocks handed to the policy per epoch
    ft_flags: tuple[str, ...]  # finetune.py's flags, for BlockDrop and the finetuned baselines alike
    ft_epochs: int
    penalties: tuple[float, ...]
    penalty: float  # the finetuning penalty of claims 1b, 2, 4 and 5
    seeds: int
    workers: int
    train_images: int  # for the cost estimate of --plan
    test_images: int
    why: str  # how the settings were chosen, for the report

    def values(self, part: str, name: str) -> list[str]:
        """The values of ``--name`` among ``<part>_flags`` ("pretrain", "cl", "ft")."""
        return flag_values(getattr(self, f"{part}_flags"), name)

    def flag(self, part: str, name: str) -> str | None:
        """The value of ``--name`` among ``<part>_flags``, or None."""
        return flag_value(getattr(self, f"{part}_flags"), name)


def flag_values(flags, name: str) -> list[str]:
    """The values of ``--name`` in a command's ``flags``, as strings: none when
    the flag is absent (or takes none), several for a flag of several values."""
    flags = [str(f) for f in flags]
    if f"--{name}" not in flags:
        return []
    after = flags[flags.index(f"--{name}") + 1:]
    ends = [i for i, f in enumerate(after) if f.startswith("--")]
    return after[: ends[0] if ends else len(after)]


def flag_value(flags, name: str) -> str | None:
    """The value of ``--name`` in a command's ``flags``, or None."""
    values = flag_values(flags, name)
    return values[0] if values else None


def check_distinct_penalties(penalties) -> None:
    """Each penalty's runs are in a folder named by its value to six digits
    (``f"{p:g}"``): two that are the same there would share one."""
    names = [f"{p:g}" for p in penalties]
    if len(set(names)) != len(names):
        raise BlockDropError(f"--penalties {' '.join(names)}: two of them are the same to six digits and would share "
                         "a folder; give each once")


_CIFAR_CL = ("--lr", "1e-3", "--penalty", "-1", "--batch_size", "2048")  # the authors' README
_CIFAR_FT = ("--lr", "1e-4", "--epoch_step", "1600", "--batch_size", "256")
_CIFAR_WHY = "the paper's schedules (SPEC sections 4 and 5, the authors' README), its penalties, three seeds"

DIGITS_WHY = (
    "the base is the demo's (the README says how it was chosen). The curriculum is the paper's recipe (Adam at lr "
    "1e-3, alpha 0.8, beta 0.1, penalty -1, one block handed over per epoch) at batch 32: 45 Adam steps per epoch on "
    "1,437 images, where the authors' CIFAR run takes 25 per epoch for 5,000 epochs. Its length comes from learning "
    "curves measured on seed 0: at a constant lr the training reward levels off at about -0.29 from the handover "
    "(epoch 14) to epoch 50, then creeps up again (-0.24 at epoch 65), and without the curriculum it still rises at "
    "epoch 60. With the learning rate divided by 10 at epoch 50 the curriculum settled (flat over its last 20 "
    "epochs, at -0.27); to fit three seeds of both arms in an hour of a 2-core CPU the plan divides it at epoch 40 "
    "and stops at epoch 59, and the report tests every curve for a plateau. Finetuning runs 6 epochs at lr 1e-3 (the demo's rate; its training "
    "accuracy passes 90% by then); the shallower ResNets stop at 20 layers, where the digits' ResNets already reach "
    "the base's accuracy")

FASHION_CPU_IMAGES = 4000  # the CPU plan's training images, 400 of each class
_FASHION_SUBSET = ("--train_subset", str(FASHION_CPU_IMAGES))
FASHION_CPU_WHY = (
    "sized so that three seeds finish in 90 minutes on a 2-core CPU, on the whole 10,000-image test set (one image "
    "is 0.01 points). Every network trains on the same 4,000 images (400 per class, `--train_subset`). The networks "
    "were chosen by measurement: trained 15 epochs by the base's recipe, the ResNet-8 reached 80.3%, the ResNet-14 "
    "83.3% and the ResNet-20 85.8%, so depth pays here by several points, far beyond the noise; a ResNet-32 costs "
    "1.8 times a ResNet-20 per image and did not fit the budget. The bases train 30 epochs: after 15 the ResNet-20 "
    "lost 12 to 30 points when any one block was dropped, and its curriculum kept 8.74 of the 9 blocks (a policy "
    "that drops nothing leaves the heuristics nothing to be compared at); after 30 (88.4%) its curriculum dropped "
    "about one block (84.8% at 8.1 blocks at epoch 10). The curriculum is the paper's recipe at batch 32 (125 Adam "
    "steps per epoch): the policy decides every block from epoch 8, and in a pilot run its training reward was flat "
    "from epoch 10 to 15 (-0.31 to -0.32); the learning rate is divided by 10 at epoch 14 and the run stops at 20, "
    "and the report tests every curve for a plateau. Finetuning runs 3 epochs at the paper's lr 1e-4: at the "
    "digits' 1e-3 its first epoch cut the test accuracy from 84.3% to 79.7%, at 1e-4 it held (84.1% after 4 epochs)")
FASHION_GPU_WHY = (
    "all 60,000 training images, the data held on the GPU (`--device_data`): the bases 30 epochs (the learning rate "
    "divided by 10 at epochs 15 and 25), the curriculum at batch 256 (235 Adam steps per epoch, so the policy "
    "decides every block from epoch 8, past the step count at which the CPU plan's pilot curriculum was flat; the "
    "learning rate divided at epoch 10, the run stopped at 13), finetuning 2 epochs at lr 1e-4 (470 steps); "
    "`--plan` estimates it at under 10 minutes of one data-centre GPU")

PLANS = {
    "R32_Digits": Plan(
        shallower=("R8_Digits", "R14_Digits", "R20_Digits"),
        pretrain_flags=("--milestones", "6", "9", "--batch_size", "64"), base_epochs=12,
        cl_flags=("--lr", "1e-3", "--penalty", "-1", "--batch_size", "32", "--epoch_step", "40"), cl_epochs=59,
        cl_step=1, ft_flags=("--lr", "1e-3", "--batch_size", "128"), ft_epochs=5,
        penalties=(-1.0, -5.0, -10.0), penalty=-5.0, seeds=3, workers=0, train_images=1437, test_images=360,
        why=DIGITS_WHY),
    "R32_C10": Plan(("R20_C10",), (), 164, _CIFAR_CL, 5000, 1, _CIFAR_FT, 2000, (-1.0, -5.0, -10.0), -10.0, 3, 4,
                    50000, 10000, _CIFAR_WHY),
    "R110_C10": Plan(("R20_C10", "R32_C10", "R44_C10", "R56_C10"), (), 164, _CIFAR_CL, 5000, 1, _CIFAR_FT, 2000,
                     (-1.0, -2.0, -5.0, -10.0), -10.0, 3, 4, 50000, 10000, _CIFAR_WHY),
    "R20_Fashion": Plan(
        shallower=("R8_Fashion", "R14_Fashion"),
        pretrain_flags=("--milestones", "15", "25", "--batch_size", "128", "--test_every", "5", *_FASHION_SUBSET),
        base_epochs=30,
        cl_flags=("--lr", "1e-3", "--penalty", "-1", "--batch_size", "32", "--epoch_step", "14", *_FASHION_SUBSET),
        cl_epochs=20, cl_step=1, ft_flags=("--lr", "1e-4", "--batch_size", "128", *_FASHION_SUBSET), ft_epochs=2,
        penalties=(-1.0, -5.0, -10.0), penalty=-5.0, seeds=3, workers=0, train_images=FASHION_CPU_IMAGES,
        test_images=10000, why=FASHION_CPU_WHY),
    # ImageNet: torchvision's ResNet-101 and, the shallower one, ResNet-50, from the torch hub cache; one seed
    "R101_ImgNet": Plan(("R50_ImgNet",), (), None, ("--lr", "1e-3", "--penalty", "-1", "--batch_size", "2048"),
                        45, 1, ("--lr", "1e-4", "--batch_size", "320"), 10, (-5.0,), -5.0, 1, 8, 1281167, 50000,
                        "the paper's schedules (45 curriculum epochs, 10 finetuning epochs at γ = -5); one seed, "
                        "for cost"),
}

# The plans for a GPU, where a configuration has one: reproduce.py --hardware gpu.
GPU_PLANS = {  # the CPU plan's networks, penalties, seeds and test set; all training images, on the GPU
    "R20_Fashion": replace(
        PLANS["R20_Fashion"],
        pretrain_flags=("--milestones", "15", "25", "--batch_size", "128", "--test_every", "5", "--device_data"),
        cl_flags=("--lr", "1e-3", "--penalty", "-1", "--batch_size", "256", "--epoch_step", "10", "--device_data"),
        cl_epochs=13, ft_flags=("--lr", "1e-4", "--batch_size", "256", "--device_data"), ft_epochs=1, workers=8,
        train_images=60000, why=FASHION_GPU_WHY),
}


def plan_for(model: str, hardware: str) -> Plan:
    """The plan of ``model`` for ``hardware`` ("cpu" or "gpu"); a configuration
    with one plan uses it on both."""
    return GPU_PLANS.get(model, PLANS[model]) if hardware == "gpu" else PLANS[model]


# --------------------------------------------------------------------------
# the runs
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Ref:
    """A value taken from an earlier run's outcome: ``field`` is ``path`` (a
    base or checkpoint file) or ``k`` (its mean block count, rounded)."""

    run: str
    field: str

    def __str__(self) -> str:
        return f"<{self.run}:{self.field}>"


@dataclass(frozen=True)
class PlannedRun:
    """One run of the plan. ``script`` is a script of the project, or
    ``easy_hard`` (an analysis of a finetuned model). Training runs are
    profiled by ``test.py`` when they end; a ``test.py`` run is a profile."""

    name: str  # unique; also its folder under the output folder
    script: str
    model: str
    flags: tuple = ()  # strings, numbers and Refs

    @property
    def starts_from(self) -> tuple[str, ...]:
        """The runs whose outcomes this one needs."""
        return tuple(dict.fromkeys(f.run for f in self.flags if isinstance(f, Ref)))

    @property
    def trains(self) -> bool:
        return self.script in ("pretrain.py", "cl_training.py", "finetune.py")


def num_blocks(model: str) -> int:
    from models import get_config  # the registry: only where a plan is declared
    return get_config(model).num_blocks


def declare(plan: Plan, model: str, base: str | None = None) -> list[PlannedRun]:
    """Every run of ``plan`` on ``model``, each after the runs it starts from.
    ``base``: a base ResNet file to start from instead of training one."""
    def pretrained(name: str, run_model: str) -> PlannedRun:
        return PlannedRun(name, "pretrain.py", run_model, (*plan.pretrain_flags, "--epochs", plan.base_epochs,
                                                          "--seed", 0))

    base_ref = Ref("base", "path")
    runs = [PlannedRun("base", "given", model, (base,))] if base or plan.base_epochs is None else \
        [pretrained("base", model)]
    runs.append(PlannedRun("full", "test.py", model, ("--base", base_ref)))
    for name in plan.shallower:  # trained once, as the base is: the seeds vary the curriculum and finetuning
        runs += [pretrained(f"shallow/{name}", name) if plan.base_epochs is not None
                 else PlannedRun(f"shallow/{name}", "given", name, (None,)),
                 PlannedRun(f"shallow/{name}/profile", "test.py", name, ("--base", Ref(f"shallow/{name}", "path")))]
    for seed in range(plan.seeds):
        runs += declare_seed(plan, model, seed, base_ref)
    return runs


def declare_seed(plan: Plan, model: str, seed: int, base: Ref) -> list[PlannedRun]:
    """The runs of one seed: the curriculum with and without, finetuning at every
    penalty and without the curriculum, and each heuristic at BlockDrop's block
    count, on the frozen ResNet and finetuned."""
    s, k = f"seed_{seed}", num_blocks(model)
    seeded = ("--seed", seed, "--base", base)
    cl = (*seeded, *plan.cl_flags, "--max_epochs", plan.cl_epochs, "--test_every", max(1, plan.cl_epochs))
    ft = (*seeded, *plan.ft_flags, "--max_epochs", plan.ft_epochs, "--test_every", max(1, plan.ft_epochs))
    chosen = f"{s}/ft_{plan.penalty:g}"
    runs = [PlannedRun(f"{s}/cl", "cl_training.py", model, (*cl, "--cl_step", plan.cl_step)),
            PlannedRun(f"{s}/nocl", "cl_training.py", model, (*cl, "--cl_step", k))]
    runs += [PlannedRun(f"{s}/{h}_frozen", "test.py", model, ("--base", base, "--policy", h, "--k", Ref(f"{s}/cl", "k"),
                                                              "--seed", seed)) for h in HEURISTICS]
    runs += [PlannedRun(f"{s}/ft_{p:g}", "finetune.py", model,
                        (*ft, "--penalty", f"{p:g}", "--pretrained", Ref(f"{s}/cl", "path"))) for p in plan.penalties]
    runs += [PlannedRun(f"{s}/{h}_ft", "finetune.py", model,
                        (*ft, "--penalty", f"{plan.penalty:g}", "--policy", h, "--k", Ref(chosen, "k")))
             for h in HEURISTICS]
    runs.append(PlannedRun(f"{s}/ft_nocl", "finetune.py", model,
                           (*ft, "--penalty", f"{plan.penalty:g}", "--pretrained", Ref(f"{s}/nocl", "path"))))
    runs.append(PlannedRun(f"{s}/instance", "easy_hard", model, ("--load", Ref(chosen, "path"), "--base", base)))
    return runs


def with_flags(plan: Plan, **changes) -> Plan:
    """The plan with the fields given (None: as it is)."""
    return replace(plan, **{k: v for k, v in changes.items() if v is not None})


# --------------------------------------------------------------------------
# the results
# --------------------------------------------------------------------------
@dataclass
class Profile:
    """``test.py``'s metrics of one model on the test set."""

    accuracy: float
    block_usage: float
    block_usage_std: float
    flops: float  # per image, the policy network included
    resnet_flops: float  # per image, the ResNet alone
    unique_policies: int
    images: int

    @classmethod
    def of(cls, metrics: dict) -> Profile:
        return cls(**{f.name: metrics[f.name] for f in fields(cls)})


@dataclass
class Curve:
    """A training run's metrics after each epoch (on its training images).
    ``handover``: the first epoch at which the policy decides every block."""

    epoch: list[int]
    reward: list[float]
    accuracy: list[float]
    blocks: list[float]
    handover: int = 0


@dataclass
class Outcome:
    """What one planned run gave; every field it did not give is None, and
    ``note`` says why a run was not made."""

    profile: Profile | None = None
    curve: Curve | None = None
    reward: float | None = None  # the test reward of its last evaluation (training runs)
    path: str | None = None  # the base or checkpoint it wrote
    k: int | None = None  # its mean block count, rounded (the heuristics' K)
    easy_blocks: float | None = None  # easy_hard: blocks used by the easy and the hard half
    hard_blocks: float | None = None
    easy_accuracy: float | None = None  # ... and the base's accuracy on each half
    hard_accuracy: float | None = None
    note: str = ""


@dataclass(frozen=True)
class Sample:
    """A figure measured once per seed (or once: a network trained once). A
    value that was not measured is NaN, and so are then the mean and spread."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values) -> Sample:
        return cls(tuple(math.nan if v is None else float(v) for v in values))

    @property
    def measured(self) -> bool:
        return bool(self.values) and not any(math.isnan(v) for v in self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.measured else math.nan

    @property
    def std(self) -> float:
        if not self.measured:
            return math.nan
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    @property
    def n(self) -> int:
        return len(self.values)

    def pct(self, digits: int = 1) -> str:
        return f"{100 * self.mean:.{digits}f} ± {100 * self.std:.{digits}f}%" if self.measured else "not measured"

    def num(self, digits: int = 2) -> str:
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}" if self.measured else "not measured"


@dataclass
class Results:
    """Every outcome of a plan, by run name (``base``, ``full``,
    ``shallow/<model>/profile``, ``seed_<n>/<run>``), with what the claims need
    to read them."""

    model: str
    num_blocks: int
    test_images: int
    seeds: list[int]
    penalties: list[float]
    penalty: float
    outcomes: dict[str, Outcome] = field(default_factory=dict)

    @property
    def penalty_key(self) -> str:
        return f"{self.penalty:g}"

    @property
    def shallower(self) -> list[str]:
        """The shallower ResNets profiled, in the order of the plan."""
        return [name.split("/")[1] for name in self.outcomes if name.startswith("shallow/") and
                name.endswith("/profile")]

    def get(self, name: str) -> Outcome:
        return self.outcomes.get(name) or Outcome(note="not run")

    def value(self, name: str, figure: str) -> float | None:
        """One figure of one run: a field of its outcome or of its profile."""
        outcome = self.get(name)
        if figure in Outcome.__dataclass_fields__:
            return getattr(outcome, figure)
        return getattr(outcome.profile, figure) if outcome.profile else None

    def single(self, name: str, figure: str = "accuracy") -> Sample:
        return Sample.of([self.value(name, figure)])

    def over_seeds(self, run: str, figure: str = "accuracy") -> Sample:
        """``figure`` of ``seed_<n>/<run>`` for every seed."""
        return Sample.of(self.value(f"seed_{seed}/{run}", figure) for seed in self.seeds)

    def curves(self, run: str) -> list[Curve | None]:
        return [self.get(f"seed_{seed}/{run}").curve for seed in self.seeds]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict) -> Results:
        outcomes = {}
        for name, o in obj["outcomes"].items():
            o = dict(o)
            o["profile"] = Profile(**o["profile"]) if o.get("profile") else None
            o["curve"] = Curve(**o["curve"]) if o.get("curve") else None
            outcomes[name] = Outcome(**o)
        return cls(**{**obj, "outcomes": outcomes})
