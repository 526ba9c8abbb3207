"""The memory plan against what Caffe actually allocates on the CPU (the same buffers it
allocates on a GPU), and the micro-batch it chooses. Tiny nets (M 2, embed 16, crop 32)."""
import pytest

from abe.net import memory_plan, netgen
from abe.train import batching
from hostile import assert_one_line_error, run_entry

CONFIGS = {"abe": dict(M=2, embed_dim=16, crop=32), "heads": dict(arch="heads", M=2,
                                                                  embed_dim=16, crop=32)}


@pytest.mark.parametrize("name, pass_batch", [("abe", 32), ("heads", 16)])
def test_plan_matches_a_cpu_run_within_ten_percent(name, pass_batch):
    """Resident memory a fresh process gains over one SGD iteration of the train net and one
    evaluation of the deploy net (weights shared), against the plan."""
    cfg = netgen.NetConfig(**CONFIGS[name])
    train, deploy = netgen.train_net(cfg), netgen.deploy_net(cfg)
    plan = memory_plan.NetMemory(train, deploy, eval_batch=16).plan(pass_batch)
    measured = memory_plan.measure_cpu(train, pass_batch, deploy, eval_batch=16)
    assert measured["total"] == pytest.approx(plan.total, rel=0.10)
    assert measured["train"] == pytest.approx(plan.total - plan.test_net, rel=0.10)
    assert plan.activations > 0 and plan.gradients > plan.activations / 2 and plan.buffers > 0


def test_plan_grows_with_the_pass_batch_and_counts_shared_parameters_once():
    cfg = netgen.NetConfig(**CONFIGS["abe"], g_sharing="towers")
    memory = memory_plan.NetMemory(netgen.train_net(cfg))
    small, large = memory.plan(2), memory.plan(8)
    assert large.activations == pytest.approx(4 * small.activations, rel=0.01)
    assert large.parameters == small.parameters
    batch = memory_plan.NetMemory(netgen.train_net(netgen.NetConfig(**CONFIGS["abe"])))
    assert small.parameters == batch.plan(2).parameters  # towers share G's weights by name
    fit = batching.fit_to_memory(batching.BatchLayout(64), memory, memory.plan(16).total + 1)
    assert (fit.pass_batch, fit.iter_size) == (16, 4)


def test_plan_memory_tool_chooses_the_micro_batch(tmp_path):
    out = tmp_path / "net"
    netgen.write_config(out, netgen.NetConfig(**CONFIGS["abe"]), netgen.SolverConfig())
    memory = memory_plan.load(out / "train.prototxt")
    device = memory.plan(32).total + (memory.plan(64).total - memory.plan(32).total) // 2
    done = run_entry(["tools/plan_memory.py", out / "train.prototxt", "--device-mem",
                      f"{device / 2 ** 20:.1f}M", "--reserve", "0"])
    assert done.returncode == 0, done.stderr
    assert "chosen for" in done.stdout and "32 images per forward pass, iter_size 2" in done.stdout
    assert_one_line_error(run_entry(["tools/plan_memory.py", out / "train.prototxt",
                                     "--gpus", "3"]), 2, "over 3 GPUs")
    assert_one_line_error(run_entry(["tools/plan_memory.py", out / "train.prototxt",
                                     "--device-mem", "lots"]), 2, "not a size")
    assert_one_line_error(run_entry(["tools/plan_memory.py", out / "train.prototxt",
                                     "--device-mem", "1M"]), 2, "even at one pair")
