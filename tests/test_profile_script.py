"""SPEC section 7: ``test.py`` end to end, on generated CIFAR-10 data and
checkpoints laid out like the authors' released files, and its one-line
errors for bad inputs."""

from __future__ import annotations

import contextlib
import io
import json
import re
import statistics

import numpy as np
import pytest
import torch

from conftest import (
    CIFAR10_FOLDER,
    CIFAR_BLOCK,
    CIFAR_FIRST_OF_STAGE,
    CIFAR_POLICY_NET_K54,
    CIFAR_STEM,
    assert_one_line_error,
    authors_agent_state,
    cifar_block_costs,
    cifar_fc_flops,
    constant_policy_agent,
    images_as_tensor,
    randomize_bn,
    run_main,
    run_test_script,
    save_legacy,
    standard_layout,
    strip_nbt,
    write_cifar10,
)
from models import CONFIGS, build_agent, build_resnet, get_config
from utils.checkpoints import load_blockdrop
from utils.pipeline import load_script

REPORT_LINES = [
    r"^    Accuracy: \d\.\d{3}$",
    r"^    Block Usage: [\d.]+ ± [\d.]+$",
    r"^    FLOPs/img: \d\.\d\dE\+\d\d ± \d\.\d\dE[+-]\d\d$",
    r"^    Unique Policies: \d+$",
]

# the constant policy of the R110_C10 checkpoint: every block but t % 3 == 1, and block 36
KEEP = [t % 3 != 1 for t in range(54)]
KEEP[36] = False


TIME_LINE = r"^    Time/img: ([\d.]+) ms \(full ResNet ([\d.]+) ms\): ([\d.]+)x measured, ([\d.]+)x in FLOPs$"


def report_lines(stdout: str) -> list[str]:
    """The four report lines: the last four lines that start with four spaces, before the time line."""
    return [line for line in stdout.splitlines() if line.startswith("    ") and "Time/img" not in line][-4:]


def line_value(lines: list[str], label: str) -> str:
    for line in lines:
        if line.startswith(f"    {label}: "):
            return line[len(f"    {label}: "):]
    raise AssertionError(f"no {label} line in {lines}")


def spec_policy_flops(keep: list[bool]) -> int:
    """FLOPs of one R110_C10 image under ``keep``, from SPEC's per-piece costs:
    stem and fc, each kept block (7,077,888 for blocks 18 and 36, else 9,437,184),
    and the policy network."""
    blocks = sum(CIFAR_FIRST_OF_STAGE if t in (18, 36) else CIFAR_BLOCK for t, k in enumerate(keep) if k)
    return CIFAR_STEM + 1280 + blocks + CIFAR_POLICY_NET_K54


def r110_with_bn(seed: int):
    torch.manual_seed(seed)
    return randomize_bn(build_resnet(get_config("R110_C10")), seed=seed).eval()


@torch.no_grad()
def labels_with_known_accuracy(preds: torch.Tensor, n_correct: int) -> np.ndarray:
    """Labels that agree with ``preds`` on the first ``n_correct`` images only."""
    labels = preds.clone()
    labels[n_correct:] = (labels[n_correct:] + 1) % 10
    return labels.numpy()


# --------------------------------------------------------------------------
# a constant policy, from a finetuned checkpoint with agent and resnet
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def constant_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("constant")
    resnet = r110_with_bn(seed=11)
    agent = constant_policy_agent(build_agent(get_config("R110_C10")), KEEP).eval()
    rng = np.random.default_rng(11)
    images = rng.integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        policies = torch.tensor([KEEP] * 8, dtype=torch.float32)
        preds = resnet(images_as_tensor(images), policies).argmax(1)
    labels = labels_with_known_accuracy(preds, n_correct=5)
    write_cifar10(tmp / "data", test_images=images, test_labels=labels)
    ckpt = save_legacy({"agent": authors_agent_state(agent), "resnet": strip_nbt(resnet.state_dict()),
                        "epoch": 2000, "reward": 0.195, "acc": 0.936},
                       tmp / "ckpt_E_2000_A_0.625_R_1.95E-01_S_35.00_#_1.t7")
    argv = ["--model", "R110_C10", "--load", ckpt, "--data_dir", tmp / "data", "--device", "cpu"]
    result = run_test_script(*argv, "--json", tmp / "out.json")
    assert result.returncode == 0, result.stderr
    return {"result": result, "lines": report_lines(result.stdout), "argv": argv, "tmp": tmp,
            "json": json.loads((tmp / "out.json").read_text()), "expected_accuracy": 5 / 8}


def test_report_has_exactly_the_four_spec_lines(constant_run):
    lines = constant_run["lines"]
    assert len(lines) == 4
    for pattern, line in zip(REPORT_LINES, lines):
        assert re.match(pattern, line), (pattern, line)
    printed = [ln for ln in constant_run["result"].stdout.splitlines() if ln.startswith("    ")]
    assert printed[:4] == lines and len(printed) == 5  # then the measured time


def test_the_time_line_follows_with_both_networks_timed_and_the_flop_ratio(constant_run):
    last = [ln for ln in constant_run["result"].stdout.splitlines() if ln.startswith("    ")][-1]
    m = re.match(TIME_LINE, last)
    assert m, last
    figures = constant_run["json"]
    assert float(m[1]) == pytest.approx(1000 * figures["time_per_image"], rel=0.01)
    assert float(m[2]) == pytest.approx(1000 * figures["full_time_per_image"], rel=0.01)
    assert float(m[3]) == pytest.approx(figures["full_time_per_image"] / figures["time_per_image"], abs=0.01)
    assert float(m[4]) == pytest.approx(figures["full_resnet_flops"] / figures["flops"], abs=0.01)
    assert figures["time_images"] == 8 and figures["device"] == "cpu"


def test_block_usage_is_the_number_of_kept_blocks_with_no_spread(constant_run):
    assert line_value(constant_run["lines"], "Block Usage") == f"{sum(KEEP)}.000 ± 0.000"


def test_a_constant_policy_is_one_unique_policy(constant_run):
    assert line_value(constant_run["lines"], "Unique Policies") == "1"


def test_flops_per_image_count_kept_blocks_and_the_policy_net(constant_run):
    assert line_value(constant_run["lines"], "FLOPs/img") == f"{spec_policy_flops(KEEP):.2E} ± 0.00E+00"


def test_json_holds_the_exact_flops(constant_run):
    figures = constant_run["json"]
    assert figures["flops"] == spec_policy_flops(KEEP)
    assert figures["policy_flops"] == 24_484_736
    assert figures["resnet_flops"] == spec_policy_flops(KEEP) - 24_484_736
    assert figures["flops_std"] == 0


@pytest.mark.parametrize("batch_size", [3, 8])
def test_profiling_in_batches_gives_the_figures_of_the_one_image_profile(constant_run, batch_size):
    batched = run_main(load_test_module(), *constant_run["argv"], "--batch_size", batch_size, "--time_images", 0,
                       "--json", constant_run["tmp"] / f"batch{batch_size}.json")
    assert batched.returncode == 0, batched.stderr
    assert report_lines(batched.stdout) == constant_run["lines"]
    figures = json.loads((constant_run["tmp"] / f"batch{batch_size}.json").read_text())
    assert "time_per_image" not in figures and figures["batch_size"] == batch_size
    for key in ("accuracy", "block_usage", "block_usage_std", "flops", "flops_std", "unique_policies"):
        assert figures[key] == constant_run["json"][key], key


def test_accuracy_matches_a_direct_computation(constant_run):
    assert line_value(constant_run["lines"], "Accuracy") == f"{constant_run['expected_accuracy']:.3f}"
    assert constant_run["json"]["accuracy"] == pytest.approx(constant_run["expected_accuracy"])


# --------------------------------------------------------------------------
# the full network (no --load), base at its default path under the working dir
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("full")
    resnet = r110_with_bn(seed=12)
    rng = np.random.default_rng(12)
    images = rng.integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        preds = resnet.forward_full(images_as_tensor(images)).argmax(1)
    labels = labels_with_known_accuracy(preds, n_correct=2)  # first 2 of the 5 profiled are right
    write_cifar10(tmp / "data", test_images=images, test_labels=labels)
    base = tmp / "work" / "cv" / "pretrained" / "R110_C10" / "pk_E_130_A_0.932.t7"
    base.parent.mkdir(parents=True)
    torch.save({"state_dict": standard_layout(strip_nbt(resnet.state_dict()), prefix="module."),
                "epoch": 130, "acc": 0.932}, base)
    result = run_main(load_test_module(), "--model", "R110_C10", "--data_dir", tmp / "data", "--limit", "5",
                      "--device", "cpu", "--json", tmp / "full.json", cwd=tmp / "work")
    assert result.returncode == 0, result.stderr
    return {"lines": report_lines(result.stdout), "json": json.loads((tmp / "full.json").read_text())}


def test_full_resnet110_profile_costs_5_30e08_flops_with_the_policy_net(full_run):
    assert line_value(full_run["lines"], "FLOPs/img") == "5.30E+08 ± 0.00E+00"
    assert full_run["json"]["flops"] == 505_775_360 + 24_484_736


def test_full_profile_uses_all_54_blocks(full_run):
    assert line_value(full_run["lines"], "Block Usage") == "54.000 ± 0.000"
    assert line_value(full_run["lines"], "Unique Policies") == "1"


def test_full_profile_accuracy_is_that_of_the_base_on_the_limited_images(full_run):
    assert full_run["json"]["images"] == 5
    assert line_value(full_run["lines"], "Accuracy") == "0.400"


# --------------------------------------------------------------------------
# mixed policies, in-process through main(args), agent-only file plus --base
# --------------------------------------------------------------------------
def load_test_module():
    return load_script("test")  # the project's test.py, not the standard library's test package


@torch.no_grad()
def spread_agent(agent, x: torch.Tensor) -> torch.Tensor:
    """Set the agent's logit layer so each block is kept for a different subset
    of the images in ``x`` (thresholds between consecutive projections), far
    from p = 0.5. Returns the greedy policies it gives on ``x``."""
    gen = torch.Generator().manual_seed(0)
    feature = agent.features.forward_features(x)  # N x 64
    weight = torch.randn(agent.num_blocks, feature.shape[1], generator=gen)
    proj = feature @ weight.T  # N x K
    scale = 1.0 / (proj.std() + 1e-12) * 50
    weight, proj = weight * scale, proj * scale
    bias = torch.empty(agent.num_blocks)
    for k in range(agent.num_blocks):
        column = proj[:, k].sort().values
        j = k % (len(column) - 1)
        bias[k] = -(column[j] + column[j + 1]) / 2
    margin = (proj + bias).abs().min()
    assert margin > 0  # no image exactly on a threshold
    stretch = max(1.0, 1.0 / margin.item())  # every logit at least 1 away from 0
    agent.logit.weight.copy_(weight * stretch)
    agent.logit.bias.copy_(bias * stretch)
    logits = agent.logit(feature)
    assert logits.abs().min() > 0.5  # no decision near p = 0.5
    return (logits > 0).float()


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mixed")
    cfg = get_config("R110_C10")
    resnet = r110_with_bn(seed=13)
    torch.manual_seed(13)
    agent = randomize_bn(build_agent(cfg), seed=13).eval()
    rng = np.random.default_rng(13)
    images = rng.integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    x = images_as_tensor(images)
    policies = spread_agent(agent, x)
    with torch.no_grad():
        preds = resnet(x, policies).argmax(1)
    labels = labels_with_known_accuracy(preds, n_correct=4)
    write_cifar10(tmp / "data", test_images=images, test_labels=labels)
    ckpt = save_legacy({"agent": authors_agent_state(agent), "epoch": 5300, "reward": 0.222, "acc": 0.754},
                       tmp / "ckpt_E_5300_A_0.754_R_2.22E-01_S_20.10_#_7787.t7")
    base = tmp / "base.t7"
    torch.save({"state_dict": standard_layout(resnet.state_dict())}, base)
    test_module = load_test_module()
    args = test_module.get_args_parser().parse_args([
        "--model", "R110_C10", "--load", str(ckpt), "--base", str(base), "--data_dir", str(tmp / "data"),
        "--device", "cpu", "--json", str(tmp / "mixed.json"),
    ])
    return {"policies": policies, "args": args, "module": test_module, "images": x, "labels": labels,
            "ckpt": ckpt, "base": base,
            "expected_accuracy": 4 / 6, "json_path": tmp / "mixed.json"}


@pytest.fixture(scope="module")
def mixed_output(mixed_run):
    """main(args) once: its returned figures and what it printed."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        figures = mixed_run["module"].main(mixed_run["args"])
    return figures, stdout.getvalue()


@pytest.fixture(scope="module")
def mixed_figures(mixed_output):
    return mixed_output[0]


def test_mixed_policies_setup_is_genuinely_mixed(mixed_run):
    used = mixed_run["policies"].sum(1)
    assert len(set(used.tolist())) > 1


def test_block_usage_spread_is_the_sample_standard_deviation(mixed_run, mixed_figures):
    used = mixed_run["policies"].sum(1).tolist()
    assert mixed_figures["block_usage"] == pytest.approx(statistics.fmean(used))
    assert mixed_figures["block_usage_std"] == pytest.approx(statistics.stdev(used))


def test_flops_spread_is_the_population_standard_deviation(mixed_run, mixed_figures):
    costs = [spec_policy_flops([bool(v) for v in p.tolist()]) for p in mixed_run["policies"]]
    assert mixed_figures["flops"] == pytest.approx(statistics.fmean(costs), rel=1e-12)
    assert mixed_figures["flops_std"] == pytest.approx(statistics.pstdev(costs), rel=1e-9)
    shapes = cifar_block_costs(18)  # the same figure from the layer shapes
    first = mixed_run["policies"][0].tolist()
    assert costs[0] == CIFAR_STEM + cifar_fc_flops(10) + CIFAR_POLICY_NET_K54 + sum(
        c for c, k in zip(shapes, first) if k)


def test_unique_policies_counts_distinct_policies(mixed_run, mixed_figures):
    expected = len({tuple(p.tolist()) for p in mixed_run["policies"]})
    assert expected > 1
    assert mixed_figures["unique_policies"] == expected


def test_mixed_accuracy_matches_a_direct_computation(mixed_run, mixed_figures):
    assert mixed_figures["accuracy"] == pytest.approx(mixed_run["expected_accuracy"])


def test_load_blockdrop_gives_one_module_that_predicts_as_test_py_profiles(mixed_run, mixed_figures):
    model = load_blockdrop(mixed_run["ckpt"], "R110_C10", base=mixed_run["base"])
    assert not model.training
    logits, policy = model(mixed_run["images"])
    assert logits.shape == (6, 10) and torch.equal(policy, mixed_run["policies"])
    accuracy = (logits.argmax(1).numpy() == mixed_run["labels"]).mean()
    assert accuracy == pytest.approx(mixed_figures["accuracy"])


def test_main_prints_the_report_and_writes_json(mixed_run, mixed_output):
    figures, stdout = mixed_output
    lines = report_lines(stdout)
    assert len(lines) == 4
    for pattern, line in zip(REPORT_LINES, lines):
        assert re.match(pattern, line), (pattern, line)
    assert line_value(lines, "Block Usage") == f"{figures['block_usage']:.3f} ± {figures['block_usage_std']:.3f}"
    saved = json.loads(mixed_run["json_path"].read_text())
    assert saved["flops"] == pytest.approx(figures["flops"])
    assert saved["unique_policies"] == figures["unique_policies"]


# --------------------------------------------------------------------------
# bad inputs: one line on stderr, exit status 2, no traceback
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
    """Prepares every bad input and runs test.py's command line on each, in this process."""
    tmp = tmp_path_factory.mktemp("bad")
    write_cifar10(tmp / "data", n_train=1, n_test=2)
    cfg = get_config("R32_C10")
    torch.manual_seed(14)
    good = save_legacy({"agent": authors_agent_state(build_agent(cfg)),
                        "resnet": strip_nbt(build_resnet(cfg).state_dict()),
                        "epoch": 1, "reward": 0.1, "acc": 0.5}, tmp / "r32_good.t7")
    data = good.read_bytes()
    (tmp / "half.t7").write_bytes(data[: len(data) // 2])
    (tmp / "notes.t7").write_text("these are my notes, not a checkpoint\n")
    (tmp / "empty_cwd").mkdir()
    files = {name: (tmp / name).read_bytes() for name in ("r32_good.t7", "half.t7", "notes.t7")}
    d = str(tmp / "data")
    cases = {
        "unknown_model": (["--model", "R57_C10", "--data_dir", d], None),
        "missing_load": (["--model", "R32_C10", "--load", str(tmp / "nope.t7"), "--data_dir", d], None),
        "truncated": (["--model", "R32_C10", "--load", str(tmp / "half.t7"), "--data_dir", d], None),
        "text_file": (["--model", "R32_C10", "--load", str(tmp / "notes.t7"), "--data_dir", d], None),
        "wrong_model": (["--model", "R110_C10", "--load", str(good), "--data_dir", d], None),
        "missing_data": (["--model", "R32_C10", "--load", str(good), "--data_dir", str(tmp / "nodata")], None),
        "no_base": (["--model", "R32_C10", "--data_dir", d], tmp / "empty_cwd"),
        "cuda": (["--model", "R32_C10", "--load", str(good), "--data_dir", d, "--device", "cuda"], None),
        "unknown_flag": (["--model", "R32_C10", "--bogus", "--data_dir", d], None),
        "limit_zero": (["--model", "R32_C10", "--load", str(good), "--data_dir", d, "--limit", "0",
                        "--device", "cpu"], None),
    }
    module = load_test_module()
    results = {name: run_main(module, *args, cwd=cwd or tmp) for name, (args, cwd) in cases.items()}
    return {"results": results, "tmp": tmp, "files": files}


def test_unknown_model_is_one_line_listing_every_configuration(bad_runs):
    line = assert_one_line_error(bad_runs["results"]["unknown_model"])
    assert "R57_C10" in line
    for name in CONFIGS:
        assert name in line


def test_missing_checkpoint_is_one_line_naming_it(bad_runs):
    line = assert_one_line_error(bad_runs["results"]["missing_load"])
    assert "nope.t7" in line


def test_truncated_checkpoint_is_one_line_and_the_file_is_kept(bad_runs):
    line = assert_one_line_error(bad_runs["results"]["truncated"])
    assert "half.t7" in line
    assert (bad_runs["tmp"] / "half.t7").read_bytes() == bad_runs["files"]["half.t7"]


def test_text_file_as_checkpoint_is_one_line_and_the_file_is_kept(bad_runs):
    line = assert_one_line_error(bad_runs["results"]["text_file"])
    assert "notes.t7" in line
    assert (bad_runs["tmp"] / "notes.t7").read_bytes() == bad_runs["files"]["notes.t7"]


def test_r32_agent_with_model_r110_is_one_line_naming_both_block_counts(bad_runs):
    line = assert_one_line_error(bad_runs["results"]["wrong_model"])
    assert re.search(r"\b15\b", line) and re.search(r"\b54\b", line)
    assert (bad_runs["tmp"] / "r32_good.t7").read_bytes() == bad_runs["files"]["r32_good.t7"]


def test_missing_data_is_one_line_naming_the_folder(bad_runs):
    line = assert_one_line_error(bad_runs["results"]["missing_data"])
    assert str(bad_runs["tmp"] / "nodata" / CIFAR10_FOLDER) in line


def test_no_default_base_is_one_line_pointing_at_pretrain(bad_runs):
    line = assert_one_line_error(bad_runs["results"]["no_base"])
    assert "pretrain.py" in line
    assert "cv/pretrained/R32_C10/pk_E_164_A_0.923.t7" in line


def test_device_cuda_without_a_gpu_is_one_line(bad_runs):
    result = bad_runs["results"]["cuda"]
    if torch.cuda.is_available():
        assert result.returncode == 0, result.stderr
        assert len(report_lines(result.stdout)) == 4
    else:
        line = assert_one_line_error(result)
        assert "cuda" in line.lower()


def test_unknown_flag_is_one_line(bad_runs):
    line = assert_one_line_error(bad_runs["results"]["unknown_flag"])
    assert "--bogus" in line


def test_limit_zero_is_one_line(bad_runs):
    line = assert_one_line_error(bad_runs["results"]["limit_zero"])
    assert "--limit" in line
