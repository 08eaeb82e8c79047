"""SPEC sections 2 and 6: the authors' checkpoints load, pretrained bases in
the standard layout load, checkpoints are written atomically and named as the
authors named them."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.serialization
import torchvision

from conftest import (
    assert_same_weights,
    authors_agent_state,
    randomize_bn,
    save_legacy,
    standard_layout,
    strip_nbt,
)
from models import build_agent, build_resnet, get_config
from models.policy import imagenet_policy
from models.resnet import imagenet_resnet
from utils import (
    BlockDropError,
    checkpoint_name,
    find_default_base,
    load_base,
    load_blockdrop_checkpoint,
    load_policy_start,
    load_state_file,
    load_weights,
    parse_checkpoint_name,
    save_checkpoint,
    to_flat_keys,
    to_standard_keys,
)


@pytest.fixture
def r32_pair():
    """A trained-looking R32_C10 agent and ResNet (random weights, non-trivial BN)."""
    cfg = get_config("R32_C10")
    torch.manual_seed(5)
    agent = randomize_bn(build_agent(cfg), seed=5)
    resnet = randomize_bn(build_resnet(cfg), seed=6)
    return agent, resnet


def authors_checkpoint(agent, resnet=None, agent_key: str = "agent") -> dict:
    obj = {agent_key: authors_agent_state(agent), "epoch": 2000, "reward": 0.195, "acc": 0.936}
    if resnet is not None:
        obj["resnet"] = strip_nbt(resnet.state_dict())
    return obj


def fresh_r32():
    cfg = get_config("R32_C10")
    return build_agent(cfg), build_resnet(cfg)


# --------------------------------------------------------------------------
# the authors' files
# --------------------------------------------------------------------------
def test_authors_legacy_checkpoint_loads(tmp_path, r32_pair):
    agent, resnet = r32_pair
    obj = authors_checkpoint(agent, resnet)
    path = save_legacy(obj, tmp_path / "ckpt_E_2000_A_0.936_R_1.95E-01_S_16.93_#_469.t7")
    with open(path, "rb") as fh:
        assert not fh.read(4).startswith(b"PK")  # really the old, non-zip format
    new_agent, new_resnet = fresh_r32()
    out = load_blockdrop_checkpoint(path, "R32_C10", new_agent, new_resnet)
    assert_same_weights(new_agent, obj["agent"])
    assert_same_weights(new_resnet, obj["resnet"])
    assert out["epoch"] == 2000 and out["acc"] == pytest.approx(0.936) and out["reward"] == pytest.approx(0.195)
    assert out["has_resnet"] is True


def test_authors_checkpoint_ignores_the_old_features_fc(tmp_path, r32_pair):
    agent, _ = r32_pair
    obj = authors_checkpoint(agent)
    assert "features.fc.weight" in obj["agent"] and "features.fc.bias" in obj["agent"]
    path = save_legacy(obj, tmp_path / "cl.t7")
    new_agent, _ = fresh_r32()
    out = load_blockdrop_checkpoint(path, "R32_C10", new_agent)
    assert_same_weights(new_agent, obj["agent"])
    assert out["has_resnet"] is False
    assert "features.fc.weight" not in new_agent.state_dict()


def test_legacy_net_key_loads_as_the_agent(tmp_path, r32_pair):
    agent, _ = r32_pair
    obj = authors_checkpoint(agent, agent_key="net")
    assert "agent" not in obj
    path = save_legacy(obj, tmp_path / "old.t7")
    new_agent, _ = fresh_r32()
    load_blockdrop_checkpoint(path, "R32_C10", new_agent)
    assert_same_weights(new_agent, obj["net"])


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy-format", "zip-format"])
def test_checkpoint_saved_on_a_gpu_loads_on_the_cpu(tmp_path, r32_pair, monkeypatch, legacy):
    agent, resnet = r32_pair
    obj = authors_checkpoint(agent, resnet)
    path = tmp_path / "gpu.t7"
    with monkeypatch.context() as m:  # every storage is tagged as living on cuda:0
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    assert b"cuda:0" in path.read_bytes()
    if not torch.cuda.is_available():  # the simulation is real: a plain load would fail here
        with pytest.raises(RuntimeError):
            torch.load(path, weights_only=True)
    new_agent, new_resnet = fresh_r32()
    load_blockdrop_checkpoint(path, "R32_C10", new_agent, new_resnet)
    assert_same_weights(new_agent, obj["agent"])
    assert_same_weights(new_resnet, obj["resnet"])
    assert all(p.device.type == "cpu" for p in new_resnet.parameters())


def test_agent_for_another_block_count_is_refused_with_both_counts(tmp_path, r32_pair):
    agent, _ = r32_pair
    path = save_legacy(authors_checkpoint(agent), tmp_path / "r32.t7")
    cfg = get_config("R110_C10")
    with pytest.raises(BlockDropError) as info:
        load_blockdrop_checkpoint(path, "R110_C10", build_agent(cfg), build_resnet(cfg))
    assert "15" in str(info.value) and "54" in str(info.value)


def test_file_without_an_agent_is_refused(tmp_path, r32_pair):
    _, resnet = r32_pair
    path = save_legacy({"state_dict": resnet.state_dict()}, tmp_path / "base.t7")
    agent, _ = fresh_r32()
    with pytest.raises(BlockDropError, match="agent"):
        load_blockdrop_checkpoint(path, "R32_C10", agent)


def test_truncated_checkpoint_is_one_error_naming_the_file(tmp_path, r32_pair):
    agent, resnet = r32_pair
    good = save_legacy(authors_checkpoint(agent, resnet), tmp_path / "good.t7")
    data = good.read_bytes()
    bad = tmp_path / "half.t7"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(BlockDropError, match="half.t7"):
        load_state_file(bad)
    assert bad.read_bytes() == data[: len(data) // 2]


# --------------------------------------------------------------------------
# pretrained bases in the standard layout
# --------------------------------------------------------------------------
def base_model(kind: str):
    torch.manual_seed(7)
    net = build_resnet(get_config("R32_C10")) if kind == "R32_C10" else imagenet_resnet(18, 10)
    return randomize_bn(net, seed=7)


@pytest.mark.parametrize("kind", ["R32_C10", "resnet18"])
def test_standard_layout_base_with_module_prefix_loads_with_identical_weights(tmp_path, kind):
    source = base_model(kind)
    flat = strip_nbt(source.state_dict())
    std = standard_layout(flat, prefix="module.")
    assert "module.layer1.0.conv1.weight" in std and "module.conv1.weight" in std
    if kind == "resnet18":
        assert "module.layer2.0.downsample.0.weight" in std and "module.layer2.0.downsample.1.running_var" in std
    path = tmp_path / "pk_E_164_A_0.923.t7"
    torch.save({"state_dict": std, "epoch": 164, "acc": 0.923}, path)
    target = build_resnet(get_config("R32_C10")) if kind == "R32_C10" else imagenet_resnet(18, 10)
    load_base(target, path, kind)
    assert_same_weights(target, flat)


def test_plain_standard_state_dict_base_loads(tmp_path):
    source = base_model("R32_C10")
    path = tmp_path / "plain.t7"
    torch.save(standard_layout(source.state_dict()), path)
    target = build_resnet(get_config("R32_C10"))
    load_base(target, path, "R32_C10")
    assert_same_weights(target, source.state_dict())


def test_base_of_the_wrong_depth_is_refused(tmp_path):
    path = tmp_path / "r32.t7"
    torch.save({"state_dict": standard_layout(build_resnet(get_config("R32_C10")).state_dict())}, path)
    with pytest.raises(BlockDropError, match="r32.t7"):
        load_base(build_resnet(get_config("R110_C10")), path, "R110_C10")


def test_torchvision_resnet18_keys_map_to_the_flat_resnet18():
    tv = torchvision.models.resnet18(weights=None)
    flat = to_flat_keys(tv.state_dict())
    ours = imagenet_resnet(18)
    assert {k: tuple(v.shape) for k, v in flat.items()} == \
        {k: tuple(v.shape) for k, v in ours.state_dict().items()}


def test_torchvision_resnet18_weights_give_the_same_outputs_in_the_flat_resnet18():
    torch.manual_seed(9)
    tv = randomize_bn(torchvision.models.resnet18(weights=None), seed=9).eval()
    ours = imagenet_resnet(18).eval()
    load_weights(ours, to_flat_keys(tv.state_dict()), "resnet18", "resnet18")
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(ours.forward_full(x), tv(x), atol=1e-4)


def test_imagenet_policy_starts_from_resnet18_stage_weights(tmp_path):
    torch.manual_seed(10)
    tv_state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(tv_state, path)
    agent = imagenet_policy(33)
    load_policy_start(agent, path)
    sd = agent.state_dict()
    assert torch.equal(sd["features.conv1.weight"], tv_state["conv1.weight"])
    for s in range(4):
        assert torch.equal(sd[f"features.blocks.{s}.0.conv2.weight"], tv_state[f"layer{s + 1}.0.conv2.weight"])
    for s in range(1, 4):
        assert torch.equal(sd[f"features.ds.{s}.0.weight"], tv_state[f"layer{s + 1}.0.downsample.0.weight"])


# --------------------------------------------------------------------------
# atomic save
# --------------------------------------------------------------------------
def test_save_checkpoint_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "cv" / "ckpt.t7"
    save_checkpoint({"agent": {"w": torch.arange(3)}, "epoch": 1}, path)
    assert sorted(os.listdir(path.parent)) == ["ckpt.t7"]
    assert torch.equal(torch.load(path, weights_only=True)["agent"]["w"], torch.arange(3))


def test_save_checkpoint_replaces_an_existing_file(tmp_path):
    path = tmp_path / "ckpt.t7"
    path.write_bytes(b"old contents")
    save_checkpoint({"epoch": 2}, path)
    assert torch.load(path, weights_only=True) == {"epoch": 2}
    assert sorted(os.listdir(tmp_path)) == ["ckpt.t7"]


def test_failed_save_keeps_the_old_file_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "ckpt.t7"
    save_checkpoint({"epoch": 1}, path)
    before = path.read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError)):
        save_checkpoint({"epoch": 2, "bad": lambda: None}, path)  # a lambda cannot be pickled
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["ckpt.t7"]


# --------------------------------------------------------------------------
# names
# --------------------------------------------------------------------------
def test_checkpoint_name_is_the_authors_format():
    assert checkpoint_name(2000, 0.936, 0.195, 16.93, 469) == "ckpt_E_2000_A_0.936_R_1.95E-01_S_16.93_#_469.t7"


def test_checkpoint_name_with_a_negative_reward():
    assert checkpoint_name(4, 0.7461, -0.37, 29.789, 484) == "ckpt_E_4_A_0.746_R_-3.70E-01_S_29.79_#_484.t7"


@pytest.mark.parametrize("name,figures", [
    ("ckpt_E_5300_A_0.754_R_2.22E-01_S_20.10_#_7787.t7",
     {"epoch": 5300, "acc": 0.754, "reward": 0.222, "blocks": 20.10, "unique": 7787}),
    ("ckpt_E_4_A_0.746_R_-3.70E-01_S_29.79_#_484.t7",
     {"epoch": 4, "acc": 0.746, "reward": -0.37, "blocks": 29.79, "unique": 484}),
    ("ckpt_E_2000_A_0.936_R_1.95E-01_S_16.93_#_469.t7",
     {"epoch": 2000, "acc": 0.936, "reward": 0.195, "blocks": 16.93, "unique": 469}),
])
def test_parse_checkpoint_name_roundtrips_the_authors_names(name, figures):
    parsed = parse_checkpoint_name(f"cv/cl_learning/R110_C10/{name}")
    assert parsed["epoch"] == figures["epoch"] and parsed["unique"] == figures["unique"]
    for key in ("acc", "reward", "blocks"):
        assert parsed[key] == pytest.approx(figures[key])
    assert checkpoint_name(**parsed) == name


def test_parse_checkpoint_name_rejects_other_names():
    with pytest.raises(ValueError):
        parse_checkpoint_name("pk_E_164_A_0.923.t7")


def test_checkpoints_and_files_written_atomically_get_the_usual_permissions(tmp_path):
    from utils import atomic_write_bytes

    old = os.umask(0o022)
    try:
        ckpt = save_checkpoint({"epoch": 1}, tmp_path / "ckpt.t7")
        text = atomic_write_bytes(tmp_path / "args.txt", b"lr: 0.1\n")
    finally:
        os.umask(old)
    assert ckpt.stat().st_mode & 0o777 == 0o644
    assert text.stat().st_mode & 0o777 == 0o644
    assert text.read_bytes() == b"lr: 0.1\n"


# --------------------------------------------------------------------------
# the default base, and the two key layouts
# --------------------------------------------------------------------------
def test_the_default_base_is_the_configurations_file_else_the_newest_pretrain_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = get_config("R32_C10")
    folder = tmp_path / "cv/pretrained/R32_C10"
    folder.mkdir(parents=True)
    assert find_default_base(cfg) is None
    for name in ("pk_E_12_A_0.880.t7", "pk_E_164_A_0.901.t7", "pk_E_164_A_0.915.t7", "pk_E_9_A_0.990.t7",
                 "notes.t7"):
        (folder / name).write_bytes(b"")
    # the highest epoch, then the highest accuracy; other files are not bases
    assert find_default_base(cfg) == Path("cv/pretrained/R32_C10/pk_E_164_A_0.915.t7")
    (folder / "pk_E_164_A_0.923.t7").write_bytes(b"")  # the authors' file, the configuration's default
    assert find_default_base(cfg) == Path("cv/pretrained/R32_C10/pk_E_164_A_0.923.t7")


@pytest.mark.parametrize("name", ["R32_C10", "R101_ImgNet"])
def test_flat_and_standard_key_layouts_round_trip(built_models, name):
    flat = built_models(name).state_dict()
    standard = to_standard_keys(flat)
    assert not any(k.startswith(("blocks.", "ds.")) for k in standard)
    assert list(to_flat_keys(standard)) == list(flat)
    tv = torchvision.models.resnet101() if name == "R101_ImgNet" else None
    if tv is not None:
        assert set(to_standard_keys(to_flat_keys(tv.state_dict()))) == set(tv.state_dict())
        assert set(to_flat_keys(tv.state_dict())) == set(flat)
