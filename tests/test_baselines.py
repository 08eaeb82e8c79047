"""The paper's heuristic baselines as policy sources (SPEC section 9): FirstK
and RandomK in the policy network's place, in profiling and in finetuning."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import finetune
from benchmarks import speed
from conftest import assert_one_line_error, cifar_block_costs, cifar_folder, run_main
from models import BlockDrop, build_agent, build_resnet, distribute, fixed_policy, get_config
from rl import RLConfig, train_step
from utils.flops import agent_flops, policy_flops, resnet_flop_table
from utils.pipeline import load_script

K = 15  # R32: 5 blocks per stage


def test_firstk_keeps_exactly_the_first_k_blocks_of_every_image():
    for k in (1, 7, K):
        policy, value = fixed_policy("firstk", K, k)(torch.zeros(4, 3, 32, 32))
        assert value is None
        assert policy.tolist() == [[1.0] * k + [0.0] * (K - k)] * 4


def test_randomk_keeps_exactly_k_blocks_uniformly_at_random_and_seeded():
    source = fixed_policy("randomk", K, 5, seed=3)
    policies = torch.cat([source(torch.zeros(500, 3, 32, 32))[0] for _ in range(8)])  # 4,000 images
    assert set(policies.sum(1).tolist()) == {5.0}
    assert set(policies.unique().tolist()) == {0.0, 1.0}
    share = policies.mean(0)  # each block kept by 5/15 of the images, within 4 standard errors
    assert ((share - 5 / K).abs() < 4 * (5 / K * 10 / K / len(policies)) ** 0.5).all(), share
    assert len(torch.unique(policies, dim=0)) > 2000  # of the C(15, 5) = 3,003 subsets
    again = fixed_policy("randomk", K, 5, seed=3)
    assert torch.equal(torch.cat([again(torch.zeros(500, 3, 32, 32))[0] for _ in range(8)]), policies)
    other = fixed_policy("randomk", K, 5, seed=4)
    assert not torch.equal(other(torch.zeros(500, 3, 32, 32))[0], policies[:500])


def test_randomk_draws_the_same_policies_at_any_batch_size_and_in_every_evaluation():
    source = fixed_policy("randomk", K, 6, seed=1).eval()
    whole = source.policies(12)
    source.eval()  # each evaluation starts from the seed
    assert torch.equal(torch.cat([source.policies(n) for n in (1, 4, 7)]), whole)
    source.train()
    assert torch.equal(source.policies(12), whole)  # training draws its own stream from the seed...
    assert not torch.equal(source.policies(12), whole)  # ...and goes on, while evaluation starts again
    state = copy.deepcopy(source.state_dict())
    resumed = fixed_policy("randomk", K, 6, seed=1)
    resumed.load_state_dict(state)  # a checkpoint carries the stream, so a resumed run draws on
    assert torch.equal(resumed.policies(9), source.policies(9))


def test_k_out_of_range_is_refused():
    for k in (-1, 0, K + 1):
        with pytest.raises(ValueError, match="between 1 and the 15 blocks"):
            fixed_policy("firstk", K, k)


def test_distributek_keeps_exactly_k_blocks_the_first_of_each_stage():
    for k in range(3, K + 1):
        policy = fixed_policy("distributek", K, k, stage_sizes=[5, 5, 5])(torch.zeros(2, 3, 32, 32))[0]
        assert policy.sum(1).tolist() == [k, k]
        split = distribute(k, [5, 5, 5])
        stages = policy[0].view(3, 5)
        assert stages.sum(1).tolist() == split
        for row, kept in zip(stages.tolist(), split):
            assert row == [1.0] * kept + [0.0] * (5 - kept)  # the first blocks of the stage


def test_distributek_splits_evenly_and_gives_the_deepest_stages_the_extra_blocks():
    assert distribute(9, [5, 5, 5]) == [3, 3, 3]
    assert distribute(10, [5, 5, 5]) == [3, 3, 4]
    assert distribute(11, [5, 5, 5]) == [3, 4, 4]
    assert distribute(3, [5, 5, 5]) == [1, 1, 1]
    assert distribute(15, [5, 5, 5]) == [5, 5, 5]
    assert distribute(20, [3, 4, 23, 3]) == [3, 4, 10, 3]  # ResNet-101: full stages pass their share on
    assert distribute(8, [3, 4, 23, 3]) == [2, 2, 2, 2]
    for k in (2, 0, 16):
        with pytest.raises(ValueError, match="between 3 and 15"):
            distribute(k, [5, 5, 5])


def test_distributek_costs_the_same_for_the_same_split(built_models):
    resnet = built_models("R32_C10")
    table = resnet_flop_table(resnet, 32)
    costs = cifar_block_costs(5)
    policy = fixed_policy("distributek", K, 10, stage_sizes=[5, 5, 5])(torch.zeros(1, 3, 32, 32))[0]
    assert policy_flops(table, policy).item() == table[0] + sum(costs[:3] + costs[5:8] + costs[10:14])
    moved = torch.zeros(1, K)  # the same 4 + 3 + 3 split, the extra block in the first stage instead
    moved[0, [0, 1, 2, 3, 5, 6, 7, 10, 11, 12]] = 1
    assert policy_flops(table, moved).item() == policy_flops(table, policy).item()
    even = [fixed_policy("distributek", K, k, stage_sizes=[5, 5, 5])(torch.zeros(1, 3, 32, 32))[0] for k in (3, 6)]
    assert policy_flops(table, even[1]).item() - policy_flops(table, even[0]).item() == 3 * costs[1]


def test_a_fixed_policy_costs_what_its_blocks_cost_and_nothing_for_a_policy_network(built_models):
    resnet = built_models("R32_C10")
    table = resnet_flop_table(resnet, 32)
    costs = cifar_block_costs(5)
    for name in ("firstk", "randomk"):
        source = fixed_policy(name, K, 6, seed=2)
        assert agent_flops(source, 32) == 0
        policies = source(torch.zeros(50, 3, 32, 32))[0]
        flops = policy_flops(table, policies)
        expected = [table[0] + sum(c for c, u in zip(costs, row) if u) for row in policies.tolist()]
        assert flops.tolist() == expected  # counted as for any BlockDrop policy
    first = policy_flops(table, fixed_policy("firstk", K, 6)(torch.zeros(1, 3, 32, 32))[0])
    assert first.item() == table[0] + sum(costs[:6])


def test_blockdrop_with_a_fixed_policy_runs_only_the_kept_blocks():
    torch.manual_seed(0)
    resnet = build_resnet(get_config("R32_C10")).eval()
    calls = {}
    for t, (s, i) in enumerate(resnet.block_index):
        resnet.blocks[s][i].register_forward_hook(lambda m, inp, out, t=t: calls.__setitem__(t, len(inp[0])))
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        logits, policy = BlockDrop(fixed_policy("firstk", K, 4), resnet)(x)
        assert sorted(calls) == [0, 1, 2, 3] and policy.sum(1).tolist() == [4.0] * 3
        assert torch.allclose(logits, resnet(x, policy, "masked"), atol=1e-6)


def test_finetuning_under_a_fixed_policy_trains_the_resnet_alone_under_that_policy():
    torch.manual_seed(0)
    config = get_config("R32_C10")
    resnet = build_resnet(config).train()
    source = fixed_policy("firstk", K, 9)
    optimizer = torch.optim.Adam(list(source.parameters()) + list(resnet.parameters()), lr=1e-3)
    assert len(optimizer.param_groups[0]["params"]) == len(list(resnet.parameters()))  # no agent weights
    before = copy.deepcopy(resnet.state_dict())
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    out = train_step(source, resnet, x, y, optimizer, K, RLConfig(penalty=-5, joint=True))
    assert torch.equal(out["policy"], source(x)[0])  # the fixed policy, not a sample
    moved = [k for k, v in resnet.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("blocks.0.0.") for k in moved) and not any(k.startswith("blocks.2.4.") for k in moved)
    resnet.load_state_dict(before)
    resnet.eval()
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(resnet.train()(x, out["policy"], "masked"), y).item()
    assert out["loss"] == pytest.approx(expected, rel=1e-5)  # the cross-entropy alone


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return cifar_folder(tmp_path_factory.mktemp("baselines"), n_train=4, n_test=6, seed=2)


def test_finetune_and_test_with_a_fixed_policy_end_to_end(folder):
    common = ["--model", "R32_C10", "--data_dir", "data", "--device", "cpu", "--workers", "0"]
    ft = run_main(finetune, *common, "--base", "base.t7", "--policy", "randomk", "--k", "7", "--seed", "1",
                  "--batch_size", "10", "--max_epochs", "1", "--cv_dir", "cv/rk", cwd=folder)
    assert ft.returncode == 0, ft.stderr
    ckpt = next((folder / "cv" / "rk").glob("ckpt_E_1_*.t7"))
    saved = torch.load(ckpt, weights_only=True)
    assert set(saved["agent"]) == {"_extra_state"} and saved["args"]["policy"] == "randomk"
    assert "_S_7.00_" in ckpt.name  # seven blocks for every image
    test = load_script("test")
    out = run_main(test, *common, "--load", ckpt, "--json", "rk.json", "--time_images", "0", cwd=folder)
    assert out.returncode == 0, out.stderr
    assert "Block Usage: 7.000 ± 0.000" in out.stdout  # the recorded policy, by default
    assert json.loads((folder / "rk.json").read_text())["policy"] == {"policy": "randomk", "k": 7, "seed": 1}
    frozen = run_main(test, *common, "--base", "base.t7", "--policy", "firstk", "--k", "3", "--time_images", "0",
                      cwd=folder)
    assert "Block Usage: 3.000 ± 0.000" in frozen.stdout and "Unique Policies: 1" in frozen.stdout
    spread = run_main(test, *common, "--base", "base.t7", "--policy", "distributek", "--k", "7", "--time_images", "0",
                      "--json", "dk.json", cwd=folder)
    assert "Block Usage: 7.000 ± 0.000" in spread.stdout, spread.stderr
    assert json.loads((folder / "dk.json").read_text())["policy"]["policy"] == "distributek"
    learned = run_main(test, *common, "--load", ckpt, "--policy", "learned", cwd=folder)
    assert "--policy randomk --k 7" in assert_one_line_error(learned)


@pytest.mark.parametrize("flags,named", [
    (["--policy", "firstk"], "needs --k"),
    (["--policy", "firstk", "--k", "16"], "has 15 blocks"),
    (["--k", "3"], "applies to --policy firstk, randomk or distributek only"),
    (["--policy", "firstk", "--k", "-1"], "give 1 to 15"),
    (["--policy", "randomk", "--k", "0"], "give 1 to 15"),
    (["--policy", "distributek", "--k", "2"], "at least one block of each of its 3 stages"),
    (["--policy", "distributek", "--k", "16"], "has 15 blocks"),
    (["--policy", "maxk", "--k", "3"], "--policy"),
])
def test_bad_policy_flags_are_one_line_and_touch_nothing(folder, flags, named):
    before = sorted(p.name for p in folder.rglob("*"))
    test = load_script("test")
    for module, extra in ((test, ["--base", "base.t7"]), (finetune, ["--base", "base.t7", "--cv_dir", "cv/bad"])):
        result = run_main(module, "--model", "R32_C10", "--data_dir", "data", "--device", "cpu", *extra, *flags,
                          cwd=folder)
        assert named in assert_one_line_error(result), module
    assert sorted(p.name for p in folder.rglob("*")) == before


def test_a_fixed_policy_with_pretrained_is_refused(folder):
    result = run_main(finetune, "--model", "R32_C10", "--data_dir", "data", "--base", "base.t7", "--policy", "firstk",
                      "--k", "3", "--pretrained", "x.t7", "--cv_dir", "cv/pre", cwd=folder)
    assert "--pretrained" in assert_one_line_error(result)
    assert not (folder / "cv" / "pre").exists() or not list((folder / "cv" / "pre").iterdir())


def test_build_agent_is_untouched_by_fixed_policies():
    assert getattr(build_agent(get_config("R32_C10")), "learnable", True)


def test_the_speed_benchmark_times_firstk_and_randomk_as_policy_sources():
    rows = speed.baseline_rows("R32_C10", batch=4, images=8, repeats=1, device=torch.device("cpu"), keep=0.4)
    table = resnet_flop_table(build_resnet(get_config("R32_C10")), 32)
    full = table[0] + sum(table[1])
    assert [r["policy"] for r in rows] == ["FirstK, K = 6 (40%)", "RandomK, K = 6 (40%)"]
    assert rows[0]["flops_ratio"] == pytest.approx((table[0] + sum(table[1][:6])) / full)
    assert all(r["blocks"] == 6 and r["per_image"] > 0 and r["masked"] > 0 for r in rows)


def test_the_speed_benchmark_splits_a_curriculum_step_and_times_bfloat16():
    row, = speed.curriculum_rows("R32_Digits", batch=4, repeats=1, device=torch.device("cpu"), keep=0.5)
    assert row["step"] > 0 and row["full"] > 0 and row["step_ratio"] == row["step"] / row["full"]
    assert 0 < row["policy_share"] < 2 and 0 < row["passes_share"] < 3  # parts timed apart from the step
    assert row["curriculum_bf16_ratio"] > 0 and row["finetune_bf16_ratio"] > 0
    assert "| R32_Digits | 4 | 50% |" in speed.curriculum_table([row])
