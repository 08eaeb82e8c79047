"""BlockDrop checkpoints (their names are ``utils.runstate``'s): reading a checkpoint's agent
(and ResNet, when finetuned), and "a checkpoint, then its base": the one way
the scripts and ``load_blockdrop`` get a trained model."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from models import BlockDrop, build_agent, build_resnet, fixed_policy, get_config

from .bases import load_base_for, load_weights, same_configuration
from .errors import BlockDropError
from .files import load_state_file


def recorded_policy(obj: object) -> dict | None:
    """The fixed policy (FirstK, RandomK) that a checkpoint's ResNet was
    finetuned under, from its arguments; None for the policy network's."""
    args = obj.get("args") if isinstance(obj, dict) else None
    if isinstance(args, dict) and args.get("policy") in ("firstk", "randomk", "distributek"):
        return {"policy": args["policy"], "k": args["k"], "seed": args.get("seed") or 0}
    return None


def policy_source(config, policy: str | None = None, k: int | None = None, seed: int = 0,
                  recorded: dict | None = None) -> nn.Module:
    """The policy a model runs: ``policy`` ("learned": a policy network to fill
    from a checkpoint; "firstk", "randomk": keep ``k`` blocks), by default the
    fixed policy a checkpoint ``recorded``, else the policy network."""
    policy = policy or (recorded or {}).get("policy") or "learned"
    if policy == "learned":
        if k is not None:
            raise BlockDropError(f"--k {k} applies to --policy firstk, randomk or distributek only")
        if recorded:
            raise BlockDropError(f"the checkpoint holds no policy network: its ResNet was finetuned under "
                                 f"--policy {recorded['policy']} --k {recorded['k']}; profile it with that policy")
        return build_agent(config)
    if recorded and policy == recorded["policy"] and k is None:
        k, seed = recorded["k"], recorded["seed"]
    if k is None:
        raise BlockDropError(f"--policy {policy} needs --k, the number of blocks it keeps (1 to {config.num_blocks})")
    low = len(config.stage_sizes) if policy == "distributek" else 1
    if not low <= k <= config.num_blocks:
        why = (f"DistributeK keeps at least one block of each of its {low} stages" if policy == "distributek" and k
               else "a policy keeps at least one block")
        raise BlockDropError(f"--k {k}: {config.name} has {config.num_blocks} blocks and {why}; "
                             f"give {low} to {config.num_blocks}")
    return fixed_policy(policy, config.num_blocks, k, seed, config.stage_sizes)


def load_blockdrop_checkpoint(path: Path, model_name: str, agent: nn.Module,
                              resnet: nn.Module | None = None, obj: dict | None = None) -> dict:
    """A BlockDrop checkpoint: the agent under ``agent`` (or the legacy ``net``),
    and the ResNet under ``resnet`` when finetuned. Returns the file's dict and
    sets ``has_resnet`` in it. ``obj``: the file's contents when already read."""
    obj = load_state_file(path) if obj is None else obj
    if not isinstance(obj, dict):
        raise BlockDropError(f"{path}: not a BlockDrop checkpoint (expected a dict with an 'agent' entry)")
    agent_state = obj.get("agent", obj.get("net"))
    if not isinstance(agent_state, dict):
        raise BlockDropError(f"{path}: holds no 'agent' (or legacy 'net') entry; not a BlockDrop checkpoint")
    same_configuration(path, (obj.get("args") or {}).get("model") if isinstance(obj.get("args"), dict) else None,
                       model_name)
    logit = agent_state.get("logit.weight", agent_state.get("module.logit.weight"))
    if isinstance(logit, torch.Tensor) and logit.shape[0] != agent.num_blocks:
        raise BlockDropError(
            f"{path}: its agent decides {logit.shape[0]} blocks but {model_name} has {agent.num_blocks}; "
            "pass the --model it was trained for"
        )
    recorded = recorded_policy(obj)
    if recorded and getattr(agent, "learnable", True):
        raise BlockDropError(f"{path}: holds no policy network: its ResNet was finetuned under --policy "
                             f"{recorded['policy']} --k {recorded['k']}; pass that policy")
    if getattr(agent, "learnable", True):  # a fixed policy has no weights: only the ResNet is read
        load_weights(agent, agent_state, path, f"{model_name} agent")
    has_resnet = isinstance(obj.get("resnet"), dict)
    if has_resnet and resnet is not None:
        load_weights(resnet, obj["resnet"], path, f"{model_name} ResNet")
    return {**obj, "has_resnet": has_resnet}


def load_trained(path: str | Path, config, agent: nn.Module, resnet: nn.Module,
                 base: str | None = None, obj: dict | None = None) -> dict:
    """A checkpoint, then its base: the agent (and the finetuned ResNet) of
    ``path`` into ``agent`` and ``resnet``; when the checkpoint holds no ResNet
    (a curriculum checkpoint), the base it records, else ``base`` or the
    configuration's default. Returns the checkpoint's dict; ``base_loaded``
    in it is the record (path, SHA-256) of the base loaded, when one was.
    ``obj``: the file's contents when already read."""
    ckpt = load_blockdrop_checkpoint(Path(path), config.name, agent, resnet, obj)
    if not ckpt["has_resnet"]:
        ckpt["base_loaded"] = load_base_for(resnet, config, base, ckpt.get("base"), Path(path))
    return ckpt


def load_blockdrop(path: str | Path, model: str, base: str | Path | None = None,
                   device: str | torch.device = "cpu") -> BlockDrop:
    """A trained BlockDrop model, ready to predict: ``model(images)`` gives the
    logits and the greedy policy of each image, running only the blocks each
    image keeps, in batches. ``path`` is a BlockDrop checkpoint of the
    configuration ``model``; when it holds no ResNet (a curriculum checkpoint)
    its base is the one it records, else ``base`` or the configuration's default."""
    config = get_config(model)
    obj = load_state_file(Path(path))
    agent, resnet = policy_source(config, recorded=recorded_policy(obj)), build_resnet(config)
    load_trained(path, config, agent, resnet, str(base) if base else None, obj)
    return BlockDrop(agent, resnet).to(device).eval()
