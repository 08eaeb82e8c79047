"""State-dict key layouts: the standard ResNet layout (torchvision's, and the
bases the authors trained) and the flat layout of ``FlatResNet`` (SPEC section 6).

    layer{L}.{i}.X               <->  blocks.{L-1}.{i}.X
    layer{L}.0.downsample.{j}.X  <->  ds.{L-1}.{j}.X
"""

from __future__ import annotations

import re

from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

_STANDARD = re.compile(r"^layer(\d+)\.(\d+)\.(.*)$")
_FLAT_BLOCK = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.*)$")
_FLAT_SHORTCUT = re.compile(r"^ds\.(\d+)\.(.*)$")


def to_flat_keys(state: dict) -> dict:
    """Standard keys -> flat keys; ``module.`` prefixes (DataParallel) dropped,
    flat keys passed through."""
    state = dict(state)
    while any(key.startswith("module.") for key in state):  # DataParallel, possibly nested
        consume_prefix_in_state_dict_if_present(state, "module.")
    out = {}
    for key, value in state.items():
        m = _STANDARD.match(key)
        if m:
            stage, index, rest = int(m[1]) - 1, m[2], m[3]
            if rest.startswith("downsample."):
                key = f"ds.{stage}.{rest[len('downsample.'):]}"
            else:
                key = f"blocks.{stage}.{index}.{rest}"
        out[key] = value
    return out


def to_standard_keys(state: dict) -> dict:
    """Flat keys -> standard keys (the inverse of ``to_flat_keys``)."""
    out = {}
    for key, value in state.items():
        block, shortcut = _FLAT_BLOCK.match(key), _FLAT_SHORTCUT.match(key)
        if block:
            key = f"layer{int(block[1]) + 1}.{block[2]}.{block[3]}"
        elif shortcut:
            key = f"layer{int(shortcut[1]) + 1}.0.downsample.{shortcut[2]}"
        out[key] = value
    return out
