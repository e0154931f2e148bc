"""Several processes train and sample as one (synthmed.distributed, docs/scale-out.md).

The launched tests start real 2-process runs with ``torchrun`` on the CPU (gloo backend) and compare
them with one process with the same global batch: the weights (or, where Adam turns float noise in
a gradient that is mathematically zero into a visible step, the gradients) agree to float
tolerance, sharded sampling gives the same images, and a 2-process run killed after a checkpoint
resumes to the weights of an uninterrupted run. Starting processes dominates (about a minute for
the one launch all equivalence tests share on one core), hence ``slow``: CI runs them with
``pytest -m slow tests/test_distributed.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ddp_worker
from synthmed import distributed, runtime

HERE = Path(__file__).parent
SRC = HERE.parent / "src"


# --------------------------------------------------------------------------- helpers, in one process


@pytest.fixture
def fake_world(monkeypatch):
    def set_world(rank: int, size: int):
        monkeypatch.setattr(distributed, "_world", distributed.World(rank=rank, world_size=size))
    return set_world


@pytest.mark.parametrize("n,size", [(8, 2), (7, 2), (5, 3), (3, 3), (16, 4)])
def test_rows_of_the_ranks_partition_the_batch_in_order(fake_world, n, size):
    rows = []
    for rank in range(size):
        fake_world(rank, size)
        rows += list(range(n)[distributed.shard_rows(n)])
    assert rows == list(range(n))
    # the shares of the batch mean add up to one
    total = 0.0
    for rank in range(size):
        fake_world(rank, size)
        total += distributed.local_share(len(range(n)[distributed.shard_rows(n)]), n)
    assert total == pytest.approx(1.0)


def test_chunks_are_dealt_round_robin_and_cover_everything(fake_world):
    owned = []
    for rank in range(3):
        fake_world(rank, 3)
        owned.append({i for i in range(10) if distributed.chunk_owner(i)})
    assert set().union(*owned) == set(range(10)) and sum(map(len, owned)) == 10


def test_one_process_is_a_world_of_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    w = distributed.init("auto")
    assert not w.active and distributed.is_main() and w.world_size == 1
    assert distributed.main_decides({"a": 1}) == {"a": 1}
    assert distributed.sum_over_ranks(2.5) == 2.5
    module = torch.nn.Linear(2, 2)
    assert distributed.wrap(module, "cpu") is module  # nothing wrapped, nothing changed
    assert distributed.map_chunks(lambda a, b: list(range(a, b)), 7, 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert distributed.device_for("cuda") == "cuda"


def test_on_without_a_launcher_is_a_one_line_error(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ValueError, match="torchrun"):
        distributed.init("on")
    with pytest.raises(ValueError, match="choose one of"):
        distributed.init("sometimes")


def test_the_shared_timer_is_the_plain_timer_in_one_process(monkeypatch):
    t = [0.0]
    monkeypatch.setattr(runtime, "clock", lambda: t[0])
    plain, shared = runtime.StepTimer(warmup=1, timed_steps=2), distributed.SharedStepTimer(warmup=1, timed_steps=2)
    for _ in range(4):
        t[0] += 0.5
        assert plain.tick() == shared.tick()
    assert shared.seconds_per_step == plain.seconds_per_step == pytest.approx(0.5)


# --------------------------------------------------------------------------- real 2-process runs


def torchrun(tasks: list[str], out: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(out / "cache")}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           str(HERE / "ddp_worker.py"), ",".join(tasks), str(out)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def one_process(task: str, out: Path) -> dict:
    torch.set_num_threads(1)
    return ddp_worker.run_task(task, out)


def flat(nested: dict) -> dict:
    return {f"{k}.{n}": t for k, d in nested.items() for n, t in d.items()} if isinstance(
        next(iter(nested.values())), dict) else nested


def assert_close_weights(a: dict, b: dict, atol: float) -> None:
    a, b = flat(a), flat(b)
    assert a.keys() == b.keys()
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())
    assert worst <= atol, f"weights differ by up to {worst:.3g}"


def assert_close_gradients(a: dict, b: dict, rtol: float) -> None:
    assert a.keys() == b.keys() and a
    for net in {k.split(".")[0] for k in a}:
        keys = [k for k in a if k.startswith(net + ".")]
        scale = max(a[k].abs().max().item() for k in keys)
        worst = max((a[k] - b[k]).abs().max().item() for k in keys)
        assert worst <= rtol * scale, f"{net}: gradients differ by {worst:.3g} (largest gradient {scale:.3g})"


EQUIVALENCE_TASKS = ["train:diffusion:3", "train:r3gan:1", "train:progan:3", "classifier", "classifier-bn",
                     "train-latent", "sample:diffusion-ddpm", "sample:r3gan", "features"]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    done = torchrun(EQUIVALENCE_TASKS, out)
    assert done.returncode == 0, done.stderr[-3000:]
    return {t: torch.load(out / f"{t.replace(':', '_')}.pt", weights_only=False) for t in EQUIVALENCE_TASKS}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.mark.slow
@pytest.mark.parametrize("task", ["train:diffusion:3", "train:progan:3", "classifier", "train-latent"])
def test_ddp_training_gives_the_weights_of_one_process(two_processes, tmp_path, task):
    multi, single = two_processes[task], one_process(task, tmp_path)
    assert multi["world_size"] == 2 and single["world_size"] == 1
    assert_close_weights(single["weights"], multi["weights"], atol=2e-5)
    if "loss_curve" in single:  # the logged loss is the global batch's, summed over the ranks' shares
        assert [s for s, _ in single["loss_curve"]] == [s for s, _ in multi["loss_curve"]]
        assert [v for _, v in single["loss_curve"]] == pytest.approx([v for _, v in multi["loss_curve"]], rel=1e-5)


@pytest.mark.slow
def test_ddp_r3gan_gradients_are_those_of_one_process(two_processes, tmp_path):
    # D's last bias gets a gradient that is exactly zero in exact arithmetic (the relativistic loss sees
    # only D(fake) - D(real)); one process computes it as ~1e-9 of float noise, and Adam, which divides by
    # the gradient's own size, turns that into a step of ~lr. So the gradients are compared, and the
    # weights only loosely, after one step (later steps' gradients follow from the weights Adam moved).
    multi, single = two_processes["train:r3gan:1"], one_process("train:r3gan:1", tmp_path)
    assert_close_gradients(single["grads"], multi["grads"], rtol=1e-4)
    assert_close_weights(single["weights"], multi["weights"], atol=5e-3)
    assert [v for _, v in single["loss_curve"]] == pytest.approx([v for _, v in multi["loss_curve"]], rel=1e-4)


@pytest.mark.slow
def test_every_rank_ends_with_the_same_classifier_with_batchnorm(two_processes):
    # per-rank BatchNorm statistics on CPU: not one process's classifier, but one classifier on all ranks
    assert two_processes["classifier-bn"]["ranks_agree"] is True


@pytest.mark.slow
@pytest.mark.parametrize("task", ["sample:diffusion-ddpm", "sample:r3gan"])
def test_sharded_sampling_gives_the_images_of_one_process(two_processes, tmp_path, task):
    multi, single = two_processes[task], one_process(task, tmp_path)
    assert len(single["images"]) == 9
    # the stochastic ddpm sampler too: its per-step noise belongs to the chunk, not to the rank
    assert torch.equal(single["labels"], multi["labels"])
    assert torch.equal(single["images"], multi["images"])


@pytest.mark.slow
def test_sharded_feature_extraction_gives_the_features_of_one_process(two_processes, tmp_path):
    multi, single = two_processes["features"], one_process("features", tmp_path)
    assert single["features"].shape == (11, 6)
    assert torch.equal(single["features"], multi["features"])  # the same batches, gathered in order
    # each rank computed only its share: batches 0 and 2 on rank 0, 1 and 3 on rank 1
    assert single["batches_per_rank"] == [[3, 3, 3, 2]]
    assert multi["batches_per_rank"] == [[3, 3], [3, 2]]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["diffusion", "r3gan"])
def test_a_killed_two_process_run_resumes(tmp_path, kind):
    out = tmp_path / "run"
    killed = torchrun([f"resume:{kind}:6:4"], out)
    assert killed.returncode != 0  # both processes died right after the checkpoint of step 4
    assert not (out / f"resume_{kind}_6_4.pt").exists()
    assert torch.load(out / "ckpt" / "checkpoint.pt", weights_only=False)["step"] == 4
    resumed = torchrun([f"resume:{kind}:6:"], out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    multi = torch.load(out / f"resume_{kind}_6_.pt", weights_only=False)
    single = one_process(f"resume:{kind}:6:", tmp_path / "alone")
    assert multi["step"] == single["step"] == 6
    assert_close_weights(single["weights"], multi["weights"], atol=2e-5 if kind == "diffusion" else 5e-3)
