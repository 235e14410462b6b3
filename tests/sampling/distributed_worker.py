"""One rank of the distributed-sampling tests (tests/sampling/test_distributed.py): runs named scenarios through
:func:`arkern.distributed.generate_distributed` (or ``arkern.generate(..., distributed=True)``) and writes
what happened.

    python -m tests.sampling.distributed_worker OUT_DIR SCENARIO [SCENARIO ...]

The process group comes from the torchrun environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), set
either by the test itself or by ``torch.distributed.run``. Each rank writes OUT_DIR/rank<r>.json (one
record per scenario, rewritten after every scenario so a crash or hang leaves what was done); rank 0 also
writes OUT_DIR/samples.safetensors with the gathered results. The test builds the same models and
arguments with :func:`scenario` to compute the single-process result.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

WAVENET = dict(num_layers=4, residual_channels=8, skip_channels=16, num_classes=32, max_dilation=4)
WAVENET_COND = dict(num_layers=3, residual_channels=8, skip_channels=16, num_classes=24, max_dilation=2,
                    cond_channels=2, cond_hop=4, global_channels=3)
GLOBAL_SEED = 100  # the "global_rng" scenario seeds torch's global generator with GLOBAL_SEED + rank
TIMEOUT = 20.0     # seconds; generous, the ranks share two cores with the test process
HANG_TIMEOUT = 3.0


def wavenet(config: dict, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.nn.Module:
    from arkern.models import WaveNet

    torch.manual_seed(seed)
    return WaveNet(**config).to(dtype).eval()


def scenario(name: str) -> tuple[torch.nn.Module, int, dict]:
    """(model, batch_size, generate kwargs) of a scenario whose result is compared with one process."""
    if name == "fused_uneven":  # 5 rows over 2 ranks: 3 + 2
        return wavenet(WAVENET), 5, dict(length=40, method="fused", seed=7, chunk_size=16)
    if name == "cached_condition_logits":  # per-row conditioning split with the rows; a tuple result
        model = wavenet(WAVENET_COND, torch.float64)
        g = torch.Generator().manual_seed(1)
        local = torch.randn(3, 2, 6, generator=g, dtype=torch.float64)
        glob = torch.randn(3, 3, generator=g, dtype=torch.float64)
        return model, 3, dict(length=24, method="cached", generator=torch.Generator().manual_seed(11),
                              condition={"local": local, "global": glob}, return_logits=True)
    if name == "more_ranks_than_rows":
        return wavenet(WAVENET), 1, dict(length=24, method="fused", seed=3)
    if name == "global_rng":  # no seed: rank 0's global generator decides
        return wavenet(WAVENET, torch.float64), 4, dict(length=16, method="cached")
    if name == "pixelcnn":
        from arkern.models import PixelCNN

        torch.manual_seed(0)
        model = PixelCNN(image_channels=1, num_classes=4, hidden_channels=4, num_blocks=1, input_kernel_size=3)
        return model.to(torch.float64).eval(), 3, dict(shape=(3, 3), method="cached", seed=5)
    if name == "gated_labels":  # a list of class labels, split with the rows
        from arkern.models import GatedPixelCNN

        torch.manual_seed(0)
        model = GatedPixelCNN(image_channels=3, num_classes=4, hidden_channels=6, num_layers=2, num_labels=3)
        return model.to(torch.float64).eval(), 3, dict(shape=(2, 3), method="cached", seed=9, condition=[2, 0, 1])
    if name == "after_error":  # the group still works after a rank's exception was reported
        return scenario("fused_uneven")
    raise KeyError(name)


COMPARED = ("fused_uneven", "cached_condition_logits", "more_ranks_than_rows", "global_rng", "pixelcnn",
            "gated_labels", "after_error")


def _run(name: str, rank: int, record: dict) -> object:
    """Run one scenario on this rank; returns the result of generate_distributed."""
    from arkern.distributed import generate_distributed

    seen_rows: list[int] = []
    record["callback_rows"] = seen_rows

    def callback(samples: torch.Tensor, start: int) -> None:
        seen_rows.append(samples.shape[0])
        if rank == 1 and start >= 16:
            if name == "rank1_raises":
                raise ValueError("boom at step 16")
            if name == "rank1_crashes":
                os._exit(17)
            if name == "rank1_hangs":
                time.sleep(120)

    if name in COMPARED:
        model, batch, kwargs = scenario(name)
        if name == "global_rng":
            torch.manual_seed(GLOBAL_SEED + rank)
        if name.startswith("fused"):
            kwargs["callback"] = callback
        return generate_distributed(model, batch, timeout=TIMEOUT, **kwargs)
    if name == "generate_flag":  # the top-level entry point: arkern.generate(..., distributed=True)
        import arkern
        from arkern.distributed import init_process_group_from_env

        init_process_group_from_env()  # distributed=True needs a group; a no-op after an earlier scenario
        model, batch, kwargs = scenario("fused_uneven")
        return arkern.generate(model, batch, distributed=True, **kwargs)
    if name == "different_weights":
        return generate_distributed(wavenet(WAVENET, seed=rank), 4, timeout=TIMEOUT, length=8, seed=1)
    model, batch, kwargs = scenario("fused_uneven")
    timeout = HANG_TIMEOUT if name == "rank1_hangs" else TIMEOUT
    return generate_distributed(model, batch, timeout=timeout, callback=callback, **kwargs)


def main(argv: list[str]) -> int:
    out_dir, names = Path(argv[0]), argv[1:]
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    records: dict[str, dict] = {}
    results: dict[str, torch.Tensor] = {}
    for name in names:
        record = records[name] = {}
        t0 = time.monotonic()
        try:
            out = _run(name, rank, record)
            record["outcome"] = "ok"
            record["returned"] = None if out is None else "tuple" if isinstance(out, tuple) else "tensor"
            if out is not None:
                for i, t in enumerate(out if isinstance(out, tuple) else (out,)):
                    results[f"{name}/{i}"] = t.contiguous()
        except Exception as err:
            record.update(outcome="error", error_type=type(err).__name__, message=str(err))
        record["seconds"] = time.monotonic() - t0
        (out_dir / f"rank{rank}.json").write_text(json.dumps(records, indent=1))
    if rank == 0:
        from safetensors.torch import save_file

        save_file(results, out_dir / "samples.safetensors")
    # Tear the group down before exit: left to interpreter shutdown, gloo's threads can be destroyed while
    # still joinable and the process aborts ("terminate called without an active exception"). After a
    # peer failed, destroying could wait on that peer: leave without any teardown instead.
    if all(r.get("outcome") == "ok" for r in records.values()):
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
