"""Sampling across processes (arkern.distributed): two local CPU ranks (gloo on 127.0.0.1) return exactly
the single-process samples, for even and uneven splits, more ranks than rows, per-row conditioning, image
models and a tuple result; mismatched ranks and a rank that raises, crashes or hangs mid-run give an error
on the other rank within a bounded time, never a hang. Also under ``python -m torch.distributed.run``.

The ranks are subprocesses running tests/sampling/distributed_worker.py; every one has a deadline and is killed
when it passes it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import arkern
from arkern.distributed import DistributedSamplingError, generate_distributed, split_rows
from arkern.testing import assert_close
from tests.sampling import distributed_worker as worker

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 120.0  # seconds for one launch of the ranks, startup included (2 shared cores)
RANK_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in RANK_VARS}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    return env


def _start_ranks(out: Path, scenarios: list[str], world: int = 2) -> list[subprocess.Popen]:
    port = str(_free_port())
    worker = "tests.sampling.distributed_worker"
    return [subprocess.Popen([sys.executable, "-m", worker, str(out), *scenarios], cwd=ROOT,
                             env=_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world),
                                      MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for r in range(world)]


def _finish(procs: list[subprocess.Popen], deadline: float = DEADLINE) -> list[tuple[int, str]]:
    """(returncode, output) of every process; all are killed if any is still running at the deadline."""
    end = time.monotonic() + deadline
    results = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=max(0.1, end - time.monotonic()))
            results.append((p.returncode, out))
    except subprocess.TimeoutExpired:
        pytest.fail(f"a rank did not finish within {deadline:g} s (a hang)")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return results


def _records(out: Path, rank: int) -> dict:
    return json.loads((out / f"rank{rank}.json").read_text())


def _samples(out: Path, name: str) -> list[torch.Tensor]:
    from safetensors.torch import load_file

    tensors = load_file(out / "samples.safetensors")
    return [tensors[f"{name}/{i}"] for i in range(sum(k.startswith(f"{name}/") for k in tensors))]


def _one_process(name: str) -> list[torch.Tensor]:
    model, batch, kwargs = worker.scenario(name)
    if name == "global_rng":
        torch.manual_seed(worker.GLOBAL_SEED)
    out = arkern.generate(model, batch, progress=False, **kwargs)
    return list(out) if isinstance(out, tuple) else [out]


# ---------------------------------------------------------------- in-process

@pytest.mark.parametrize("batch, world", [(6, 2), (5, 2), (7, 3), (1, 3), (2, 5), (0, 2)])
def test_split_rows_contiguous_balanced_and_complete(batch, world):
    rows = split_rows(batch, world)
    assert len(rows) == world and rows[0][0] == 0 and rows[-1][1] == batch
    assert all(a[1] == b[0] for a, b in zip(rows, rows[1:]))
    sizes = [stop - start for start, stop in rows]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_no_process_group_and_no_torchrun_environment_is_a_clear_error(monkeypatch):
    for name in RANK_VARS:
        monkeypatch.delenv(name, raising=False)
    model, batch, kwargs = worker.scenario("fused_uneven")
    with pytest.raises(RuntimeError, match="RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT are not set"):
        generate_distributed(model, batch, **kwargs)
    with pytest.raises(ValueError, match="batch_size"):
        generate_distributed(model, 0, **kwargs)
    with pytest.raises(ValueError, match="timeout"):
        generate_distributed(model, batch, timeout=-1, **kwargs)


def test_generate_distributed_true_without_a_process_group_is_a_clear_error():
    assert not dist.is_initialized()
    model, batch, kwargs = worker.scenario("fused_uneven")
    with pytest.raises(ValueError, match=r"distributed=True needs an initialised torch\.distributed"):
        arkern.generate(model, batch, distributed=True, **kwargs)


def test_single_rank_group_in_process_equals_generate():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1,
                            timeout=timedelta(seconds=30))
    try:
        model, batch, kwargs = worker.scenario("cached_condition_logits")
        samples, logits = generate_distributed(model, batch, timeout=10, progress=False, **kwargs)
        expected = _one_process("cached_condition_logits")
        assert torch.equal(samples, expected[0])
        assert torch.equal(logits, expected[1])
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- two ranks

@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """One launch of two ranks running every compared scenario and the recoverable failures in turn."""
    out = tmp_path_factory.mktemp("two_ranks")
    scenarios = [*worker.COMPARED[:-1], "different_weights", "rank1_raises", "after_error", "generate_flag"]
    results = _finish(_start_ranks(out, scenarios))
    for rank, (code, log) in enumerate(results):
        assert code == 0, f"rank {rank} exited with {code}:\n{log}"
    return out


@pytest.mark.parametrize("name", worker.COMPARED)
def test_two_ranks_return_exactly_the_single_process_samples(two_ranks, name):
    for rank in (0, 1):
        record = _records(two_ranks, rank)[name]
        assert record["outcome"] == "ok", f"rank {rank}: {record}"
    expected = _one_process(name)
    assert _records(two_ranks, 0)[name]["returned"] == ("tuple" if len(expected) > 1 else "tensor")
    assert _records(two_ranks, 1)[name]["returned"] is None  # the full batch is on rank 0 only
    got = _samples(two_ranks, name)
    assert len(got) == len(expected)
    assert torch.equal(got[0], expected[0]), f"{name}: samples differ from one process"
    for g, e in zip(got[1:], expected[1:]):  # logits: rows computed in smaller batches
        assert_close(g, e, name=f"{name} logits")


def test_generate_distributed_true_on_two_ranks_equals_one_process(two_ranks):
    for rank in (0, 1):
        assert _records(two_ranks, rank)["generate_flag"]["outcome"] == "ok", _records(two_ranks, rank)
    assert _records(two_ranks, 1)["generate_flag"]["returned"] is None
    model, batch, kwargs = worker.scenario("fused_uneven")
    expected = arkern.generate(model, batch, progress=False, **kwargs)
    assert torch.equal(_samples(two_ranks, "generate_flag")[0], expected)


def test_each_rank_samples_its_contiguous_rows(two_ranks):
    # fused_uneven: 5 rows over 2 ranks -> 3 + 2; the callback sees that rank's rows after each chunk
    chunks = -(-40 // 16)
    assert _records(two_ranks, 0)["fused_uneven"]["callback_rows"] == [3] * chunks
    assert _records(two_ranks, 1)["fused_uneven"]["callback_rows"] == [2] * chunks


def test_different_weights_are_an_error_on_every_rank(two_ranks):
    for rank in (0, 1):
        record = _records(two_ranks, rank)["different_weights"]
        assert record["error_type"] == "ValueError" and "model weights of rank(s) [1]" in record["message"]


def test_a_rank_raising_mid_run_is_an_error_on_the_others(two_ranks):
    r0, r1 = _records(two_ranks, 0)["rank1_raises"], _records(two_ranks, 1)["rank1_raises"]
    assert r1["error_type"] == "ValueError" and r1["message"] == "boom at step 16"
    assert r1["callback_rows"] == [2, 2]  # raised in its second chunk, mid-run
    assert r0["error_type"] == DistributedSamplingError.__name__
    assert "rank 1: ValueError: boom at step 16" in r0["message"]


def test_a_rank_crashing_mid_run_is_an_error_on_the_others(tmp_path):
    (r0_code, r0_log), (r1_code, _) = _finish(_start_ranks(tmp_path, ["rank1_crashes"]))
    assert r1_code == 17
    assert r0_code == 0, r0_log
    record = _records(tmp_path, 0)["rank1_crashes"]
    assert record["error_type"] == DistributedSamplingError.__name__, record
    assert record["seconds"] < worker.TIMEOUT  # seen when the connection closed, not by the timeout


def test_a_rank_hanging_mid_run_is_an_error_on_the_others_after_the_timeout(tmp_path):
    procs = _start_ranks(tmp_path, ["rank1_hangs"])
    try:
        (r0_code, r0_log), = _finish(procs[:1])
    finally:
        procs[1].kill()  # sleeping in its callback
        procs[1].communicate()
    assert r0_code == 0, r0_log
    record = _records(tmp_path, 0)["rank1_hangs"]
    assert record["error_type"] == DistributedSamplingError.__name__, record
    assert "Ranks 1 failed to pass monitoredBarrier" in record["message"]
    assert worker.HANG_TIMEOUT <= record["seconds"] < worker.HANG_TIMEOUT + 15


def test_torchrun_two_processes_equal_one_process(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc-per-node=2",
           "--monitor-interval=0.2", "-m", "tests.sampling.distributed_worker", str(tmp_path), "fused_uneven"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    (code, log), = _finish([proc])
    assert code == 0, log
    assert _records(tmp_path, 0)["fused_uneven"]["outcome"] == "ok"
    assert torch.equal(_samples(tmp_path, "fused_uneven")[0], _one_process("fused_uneven")[0])
