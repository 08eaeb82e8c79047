"""Saved FLOPs against saved seconds: BlockDrop's two ways of running a batch, measured.

    python benchmarks/speed.py              (about five minutes on a 2-core CPU; --quick for one)

- the masked form (the authors' method, and the paper's training form): a block
  that any image of the batch keeps runs on the whole batch, then is masked;
- per-image execution: each block runs only on the images that keep it.

Inference, eval mode: for ResNet-32 and ResNet-110 at batch 1 and 256 (and
ResNet-101 at batches 1 and 8), with random per-image policies keeping 25, 30,
50, 75 and 100% of the blocks, with the paper's heuristic policy sources (FirstK
and RandomK keeping 30% of ResNet-110's blocks, in the policy network's place),
and with a trained digits agent (the demo's model, when ``make demo`` has run):
the ratio of FLOPs to the full ResNet's, against
the ratio of measured time, for each form. Training: seconds per curriculum
step and per finetuning step at batch 64 against the blocks the sampled
policies keep, for each form. Every time is measured in this run, the forms of
one row interleaved. The tables are printed and written as markdown (``--out``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's modules
sys.path.insert(0, str(Path(__file__).resolve().parent))  # speed_data.py

from models import BlockDrop, build_agent, build_resnet, fixed_policy, get_config
from rl import RLConfig, train_step
from speed_data import data_path_rows, data_path_table
from utils.checkpoints import load_blockdrop
from utils.cli import ArgumentParser, add_device_flag
from utils.data import get_datasets
from utils.distributed import choose_device
from utils.flops import agent_flops, policy_flops, resnet_flop_table
from utils.runstate import named_checkpoints
from utils.timing import seconds_per_image, synchronize

LEVELS = [0.25, 0.3, 0.5, 0.75, 1.0]  # 30%: the level of the tables in docs/speed.md
LAYOUT = {"memory_format": torch.contiguous_format}  # --channels_last sets torch.channels_last


def get_args_parser() -> ArgumentParser:
    p = ArgumentParser(prog="benchmarks/speed.py", description="measured time of BlockDrop's execution forms")
    p.add_argument("--out", default="benchmarks/speed.md", help="markdown file for the tables")
    p.add_argument("--digits_checkpoint", default=None,
                   help="a finetuned R32_Digits checkpoint (default: the demo's, under cv/demo/sweep/penalty_-5/)")
    p.add_argument("--quick", action="store_true", help="fewer images and repeats, no ResNet-101: about a minute")
    p.add_argument("--channels_last", action="store_true",
                   help="every network and batch in the channels-last memory format (default: contiguous NCHW)")
    p.add_argument("--data_path", action="store_true",
                   help="only images per second of an epoch (batches alone, pretraining, curriculum) on each data path (the "
                        "DataLoader with 4 workers and with none, --device_data), printed, --out not written: "
                        "about a minute and a half on a 2-core CPU")
    p.add_argument("--data_images", type=int, default=4096, help="images of the --data_path epochs")
    add_device_flag(p)
    return p


def random_policies(n: int, k: int, keep: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, k, generator=g) < keep).float()


# --------------------------------------------------------------------------
# inference
# --------------------------------------------------------------------------
def random_network(name: str, images: int, device: torch.device):
    """A configuration's ResNet (seeded weights, eval mode), its FLOP table and
    full cost, and ``images`` random images."""
    cfg = get_config(name)
    torch.manual_seed(0)
    resnet = build_resnet(cfg).to(device, **LAYOUT).eval()
    table = resnet_flop_table(resnet, cfg.input_size)
    x = torch.rand(images, 3, cfg.input_size, cfg.input_size, device=device).contiguous(**LAYOUT)
    return resnet, table, table[0] + sum(table[1]), x


def row(name: str, batch: int, policy: str, policies: torch.Tensor, flops_ratio: float, seconds: dict) -> dict:
    """One table row: time ratios of both forms to the full ResNet, beside the FLOPs ratio."""
    return {"network": name, "batch": batch, "policy": policy, "blocks": policies.sum(1).mean().item(),
            "flops_ratio": flops_ratio, "per_image": seconds["per_image"] / seconds["full"],
            "masked": seconds["masked"] / seconds["full"], "full_ms": 1000 * seconds["full"]}


def inference_rows(name: str, batch: int, images: int, repeats: int, device: torch.device,
                   levels: list[float] = LEVELS) -> list[dict]:
    resnet, table, full_flops, x = random_network(name, images, device)
    rows = []
    for keep in levels:
        policies = random_policies(images, resnet.num_blocks, keep).to(device)
        # the policies of each batch of images, found by where the batch starts in memory
        by_batch = {b.data_ptr(): p for b, p in zip(torch.split(x, batch), torch.split(policies, batch))}
        seconds = seconds_per_image({
            "full": lambda b: resnet(b),
            "per_image": lambda b, by_batch=by_batch: resnet(b, by_batch[b.data_ptr()], "per_image"),
            "masked": lambda b, by_batch=by_batch: resnet(b, by_batch[b.data_ptr()], "masked"),
        }, x, batch, repeats)
        rows.append(row(name, batch, f"random, {keep:.0%} kept", policies,
                        policy_flops(table, policies).mean().item() / full_flops, seconds))
    return rows


def baseline_rows(name: str, batch: int, images: int, repeats: int, device: torch.device,
                  keep: float = 0.3) -> list[dict]:
    """The paper's heuristic policies as the policy source, keeping ``keep`` of
    the blocks: FirstK (the same blocks for every image) and RandomK (K blocks
    at random per image), run as BlockDrop runs its policy network's output."""
    resnet, table, full_flops, x = random_network(name, images, device)
    k = round(keep * resnet.num_blocks)
    rows = []
    for policy in ("firstk", "randomk"):
        model = BlockDrop(fixed_policy(policy, resnet.num_blocks, k, seed=0), resnet).eval()
        with torch.no_grad():
            policies = torch.cat([model.policy(b) for b in torch.split(x, batch)])
        model.eval()  # RandomK's evaluation draws start again: the timed passes draw these policies
        seconds = seconds_per_image({
            "full": lambda b: resnet(b),
            "per_image": lambda b, model=model: model(b),
            "masked": lambda b, model=model: resnet(b, model.policy(b), "masked"),
        }, x, batch, repeats)
        label = f"{'FirstK' if policy == 'firstk' else 'RandomK'}, K = {k} ({k / resnet.num_blocks:.0%})"
        rows.append(row(name, batch, label, policies, policy_flops(table, policies).mean().item() / full_flops,
                        seconds))
    return rows


def digits_rows(checkpoint: Path, batches: list[int], images: dict[int, int], repeats: int,
                device: torch.device) -> list[dict]:
    """The demo's trained agent and ResNet-32 on the digits' test images."""
    model = load_blockdrop(checkpoint, "R32_Digits", device=device).to(**LAYOUT)
    _, testset = get_datasets(get_config("R32_Digits"), "data/")
    table = resnet_flop_table(model.resnet, 32)
    full_flops = table[0] + sum(table[1])
    rows = []
    for batch in batches:
        x = torch.stack([testset[i][0] for i in range(images[batch])]).to(device).contiguous(**LAYOUT)
        with torch.no_grad():
            policies = model.policy(x)
        seconds = seconds_per_image({
            "full": lambda b: model.resnet(b),
            "per_image": lambda b: model(b),
            "masked": lambda b: model.resnet(b, model.policy(b), "masked"),
        }, x, batch, repeats)
        flops = policy_flops(table, policies).mean().item() + agent_flops(model.agent, 32)
        rows.append(row("R32_Digits", batch, "trained agent (demo)", policies, flops / full_flops, seconds))
    return rows


# --------------------------------------------------------------------------
# training steps
# --------------------------------------------------------------------------
class FixedPolicies:
    """Adds +-8 to the agent's logits so that each image keeps its own random
    share of the blocks: with alpha 1 the greedy and the sampled policies keep
    the same blocks, at the agent's real cost."""

    def __init__(self, agent, batch: int, keep: float):
        self.offset = 8 * (2 * random_policies(batch, agent.num_blocks, keep, seed=1) - 1)
        agent.logit.register_forward_hook(lambda module, inputs, out: out + self.offset.to(out.device))


class Step:
    """One training step of ``name`` at batch ``batch``, its policies keeping a
    ``keep`` share of the blocks, in one phase and one execution form."""

    def __init__(self, name: str, batch: int, keep: float, joint: bool, execution: str, device: torch.device,
                 amp: torch.dtype | None = None):
        cfg = get_config(name)
        torch.manual_seed(0)
        self.resnet, self.agent = build_resnet(cfg).to(device, **LAYOUT), build_agent(cfg).to(device, **LAYOUT)
        FixedPolicies(self.agent, batch, keep)
        self.agent.train()
        self.resnet.train(joint)
        if not joint:
            self.resnet.requires_grad_(False)
        params = list(self.agent.parameters()) + (list(self.resnet.parameters()) if joint else [])
        self.optimizer = torch.optim.Adam(params, lr=1e-4)
        self.x = torch.rand(batch, 3, cfg.input_size, cfg.input_size, device=device).contiguous(**LAYOUT)
        self.y = torch.randint(0, cfg.num_classes, (batch,), device=device)
        self.rl = RLConfig(alpha=1.0, penalty=-5.0, joint=joint, execution=execution, amp=amp)
        self.num_blocks, self.device = cfg.num_blocks, device
        self.seconds, self.kept = [], []

    def run(self, timed: bool = True) -> None:
        synchronize(self.device)
        start = time.perf_counter()
        out = train_step(self.agent, self.resnet, self.x, self.y, self.optimizer, self.num_blocks, self.rl)
        synchronize(self.device)
        if timed:
            self.seconds.append(time.perf_counter() - start)
            self.kept.append(out["policy"].sum(1).mean().item())


def training_rows(name: str, batch: int, repeats: int, device: torch.device) -> list[dict]:
    """Seconds per step of every level, phase and form, the steps interleaved
    round by round so that a drift of the machine's speed falls on all alike."""
    forms = [(phase, joint, execution) for phase, joint in (("curriculum", False), ("finetune", True))
             for execution in ("per_image", "masked")]
    steps = {(keep, phase, execution): Step(name, batch, keep, joint, execution, device)
             for keep in LEVELS for phase, joint, execution in forms}
    for step in steps.values():
        step.run(timed=False)  # warm-up
    for _ in range(repeats):
        for step in steps.values():
            step.run()
    rows = []
    for keep in LEVELS:
        row = {"network": name, "batch": batch, "keep": keep}
        for phase, _, execution in forms:
            step = steps[(keep, phase, execution)]
            row[f"{phase}_{execution}"], row["blocks"] = min(step.seconds), statistics.fmean(step.kept)
        rows.append(row)
    full = rows[-1]
    for row in rows:
        for key in ("curriculum_per_image", "curriculum_masked", "finetune_per_image", "finetune_masked"):
            row[f"{key}_ratio"] = row[key] / full[key]
    return rows


def fastest(run, repeats: int, device: torch.device) -> float:
    """The fastest of ``repeats`` calls of ``run`` after a warm-up, in seconds."""
    run()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def curriculum_rows(name: str, batch: int, repeats: int, device: torch.device, keep: float = 0.7) -> list[dict]:
    """Where a curriculum step's time goes: the policy network's forward and
    backward pass with the optimizer step, and the frozen ResNet's two passes
    (the greedy and the sampled policy, each block on the images that keep it);
    the whole step as a ratio to one forward pass of the full ResNet; and the
    curriculum and finetuning steps under bfloat16 autocast (``--amp``) as a
    ratio to float32."""
    step = Step(name, batch, keep, False, "per_image", device)
    policy = random_policies(batch, step.num_blocks, keep).to(device)
    x, resnet, agent = step.x, step.resnet, step.agent

    def policy_pass():
        step.optimizer.zero_grad(set_to_none=False)
        agent(x)[0].sum().backward()
        step.optimizer.step()

    def resnet_pass():
        with torch.no_grad():
            resnet(x, policy, "per_image")

    def full_pass():
        with torch.no_grad():
            resnet(x)

    parts = {"step": lambda: step.run(timed=False), "policy": policy_pass, "resnet": resnet_pass, "full": full_pass}
    seconds = {key: fastest(run, repeats, device) for key, run in parts.items()}
    row = {"network": name, "batch": batch, "keep": keep, **seconds,
           "policy_share": seconds["policy"] / seconds["step"], "passes_share": 2 * seconds["resnet"] / seconds["step"],
           "step_ratio": seconds["step"] / seconds["full"]}
    for phase, joint in (("curriculum", False), ("finetune", True)):
        forms = {amp: Step(name, batch, keep, joint, "per_image" if not joint else "masked", device, amp)
                 for amp in (None, torch.bfloat16)}
        times = {amp: fastest(lambda s=s: s.run(timed=False), repeats, device) for amp, s in forms.items()}
        row[f"{phase}_bf16_ratio"] = times[torch.bfloat16] / times[None]
    return [row]


# --------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------
def curriculum_table(rows: list[dict]) -> str:
    lines = ["| network | batch | blocks kept | curriculum step | policy network, forward and backward | "
             "frozen ResNet, two passes | step / one full forward | bfloat16 / float32: curriculum step | "
             "bfloat16 / float32: finetuning step |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['network']} | {r['batch']} | {r['keep']:.0%} | {1000 * r['step']:.0f} ms | "
                     f"{r['policy_share']:.0%} | {r['passes_share']:.0%} | **{r['step_ratio']:.2f}** | "
                     f"**{r['curriculum_bf16_ratio']:.2f}** | **{r['finetune_bf16_ratio']:.2f}** |")
    return "\n".join(lines)

def inference_table(rows: list[dict]) -> str:
    lines = ["| network | batch | policies | blocks kept | FLOPs ratio | time ratio, per image | "
             "time ratio, masked | full ResNet |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['network']} | {r['batch']} | {r['policy']} | {r['blocks']:.1f} | {r['flops_ratio']:.2f} | "
                     f"**{r['per_image']:.2f}** | {r['masked']:.2f} | {r['full_ms']:.2f} ms/img |")
    return "\n".join(lines)


def training_table(rows: list[dict]) -> str:
    lines = ["| network | batch | blocks kept | curriculum step, per image | curriculum step, masked | "
             "finetuning step, masked | finetuning step, per image (`--per_image`) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{r[k]:.3f} s ({r[k + '_ratio']:.2f})" for k in
                 ("curriculum_per_image", "curriculum_masked", "finetune_masked", "finetune_per_image")]
        lines.append(f"| {r['network']} | {r['batch']} | {r['blocks']:.1f} ({r['keep']:.0%}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


DATA_PATH_NOTE = ("**The data path** (images per second of an epoch of R8_Fashion at batch 128 on Fashion-like "
                  "random 32x32 images, its batches alone and with a pretraining or a curriculum step: the "
                  "DataLoader with the scripts' 4 workers and with none, against `--device_data`; the fastest of "
                  "2 epochs, interleaved; in bold, the speed against the DataLoader with 4 workers)")


def data_path_section(args: argparse.Namespace, device: torch.device, repeats: int = 2) -> str:
    print(f"data path: R8_Fashion, {args.data_images} images, batch 128", flush=True)
    rows = data_path_rows("R8_Fashion", args.data_images, 128, repeats, device, LAYOUT["memory_format"])
    return DATA_PATH_NOTE + "\n\n" + data_path_table(rows)


def main(args: argparse.Namespace) -> str:
    device = choose_device(args.device)
    if args.channels_last:
        LAYOUT["memory_format"] = torch.channels_last
    if args.data_path:
        text = data_path_section(args, device)
        print(f"\nMeasured on {device} ({torch.get_num_threads()} threads), PyTorch {torch.__version__}.\n\n{text}")
        return text
    quick = args.quick
    repeats = 1 if quick else 7
    one_image = 8 if quick else 32
    inference = []
    for name in ("R32_C10", "R110_C10"):
        for batch, images in ((1, one_image), (256, 256)):
            print(f"inference: {name}, batch {batch}", flush=True)
            inference += inference_rows(name, batch, images, repeats, device)
    for batch, images in ((1, one_image), (256, 256)):
        print(f"inference: FirstK and RandomK on R110_C10, batch {batch}", flush=True)
        inference += baseline_rows("R110_C10", batch, images, repeats, device)
    if not quick:
        for batch, images in ((1, 8), (8, 8)):
            print(f"inference: R101_ImgNet, batch {batch}", flush=True)
            inference += inference_rows("R101_ImgNet", batch, images, 1, device)
    digits = Path(args.digits_checkpoint) if args.digits_checkpoint else next(
        iter(named_checkpoints("cv/demo/sweep/penalty_-5")), None)
    if digits is not None and digits.is_file():
        print(f"inference: the trained digits model {digits}", flush=True)
        inference += digits_rows(digits, [1, 256], {1: one_image, 256: 256}, repeats, device)
    else:
        print("note: no trained digits model (run make demo, or pass --digits_checkpoint); its rows are left out")
    training = []
    for name in ("R32_C10", "R110_C10"):
        print(f"training steps: {name}, batch 64", flush=True)
        training += training_rows(name, 64, 1 if quick else 7, device)

    curriculum = []
    for batch in (32, 128):
        print(f"curriculum step: R32_Digits, batch {batch}", flush=True)
        curriculum += curriculum_rows("R32_Digits", batch, 1 if quick else 7, device)

    layout = "channels-last" if args.channels_last else "contiguous (NCHW)"
    header = (f"Measured on {device} ({torch.get_num_threads()} threads), PyTorch {torch.__version__}, "
              f"{layout} memory format. "
              "Ratios are to the full ResNet at the same batch size (inference) and to a step whose policies "
              "keep every block (training).")
    text = "\n\n".join([header, "**Inference** (eval mode)", inference_table(inference),
                        "**Training steps** (seconds per step; in brackets, the ratio to the 100% row)",
                        training_table(training),
                        "**The curriculum step**, where its time goes (shares of the step; the frozen ResNet's "
                        "passes each run a block on the images that keep it), the step as a ratio to one forward "
                        "pass of the full ResNet at the same batch, and bfloat16 autocast (`--amp`) as a ratio to "
                        "float32", curriculum_table(curriculum), data_path_section(args, device)]) + "\n"
    print("\n" + text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written: {out}")
    return text


if __name__ == "__main__":
    main(get_args_parser().parse_args())
