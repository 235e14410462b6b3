"""Sampling across processes: one large batch split over the ranks of a ``torch.distributed`` process group.

How :func:`generate_distributed` keeps the result identical to one process:

1. Every rank draws the **full** noise of the batch exactly as :func:`arkern.generate` would (same seed or
   generator state -> same tensor; without either, rank 0 draws from its global generator and broadcasts).
2. Rank r samples the contiguous rows ``split_rows(batch_size, world_size)[r]`` with plain
   :func:`arkern.sampling.generate`, on its slice of the noise and of every per-row argument (tensors whose
   first dimension is ``batch_size``: conditioning, forced samples). Rows are independent in every
   supported model, so each row gets the samples the single-process run gives it.
3. The slices are gathered on rank 0 (padded to equal size, then trimmed), which returns the full batch.

Failure handling: before sampling the ranks compare fingerprints of the model weights, the noise and the
arguments (a mismatch raises ``ValueError`` on every rank instead of silently mixing two runs). An exception
on one rank is caught, sent to the others at the next synchronisation point and raised on all of them
(:class:`DistributedSamplingError` on the others). A rank that crashes closes its connections, which the
others see at once; a rank that hangs is detected by the ``timeout`` (a monitored barrier on gloo, which
names the missing ranks; timed waits on other backends).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from datetime import timedelta

import torch
import torch.distributed as dist

from arkern import sampling

__all__ = ["DistributedSamplingError", "generate_distributed", "init_process_group_from_env", "split_rows"]

# what torchrun (torch.distributed.run) exports to every worker and env:// initialisation reads
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# arguments that change what a rank shows or calls back, not which samples it draws
_LOCAL_ONLY = ("callback", "progress")


class DistributedSamplingError(RuntimeError):
    """Another rank failed, crashed or did not answer within the timeout during :func:`generate_distributed`."""


def split_rows(batch_size: int, world_size: int) -> list[tuple[int, int]]:
    """The contiguous rows [start, stop) each rank samples: the first ``batch_size % world_size`` ranks get one
    row more than the others; ranks beyond ``batch_size`` get an empty range.

    >>> split_rows(5, 2)
    [(0, 3), (3, 5)]
    >>> split_rows(1, 3)
    [(0, 1), (1, 1), (1, 1)]
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
        raise ValueError(f"split_rows: batch_size must be an int >= 0, got {batch_size!r}")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"split_rows: world_size must be an int >= 1, got {world_size!r}")
    base, extra = divmod(batch_size, world_size)
    bounds = [0]
    for r in range(world_size):
        bounds.append(bounds[-1] + base + (r < extra))
    return list(zip(bounds[:-1], bounds[1:]))


def _as_timedelta(timeout: float | timedelta | None) -> timedelta | None:
    if timeout is None or isinstance(timeout, timedelta):
        return timeout
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"generate_distributed: timeout must be seconds > 0, a timedelta or None, got {timeout!r}")
    return timedelta(seconds=timeout)


def init_process_group_from_env(device: torch.device | str = "cpu",
                                 timeout: float | timedelta | None = None) -> bool:
    """Initialise the default process group from torchrun's environment if none is initialised yet.

    The backend follows `device`: nccl for CUDA (and the current CUDA device is set to `device`, or to
    ``LOCAL_RANK`` when `device` has no index), gloo otherwise. `timeout` becomes the group's own timeout
    (None: torch's default, 30 min for gloo). The group stays initialised; call
    ``torch.distributed.destroy_process_group()`` when done.

    Returns True if it initialised the group, False if one already was. Raises RuntimeError naming the
    missing variables when not started by torchrun (or with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set).
    """
    if not dist.is_available():
        raise RuntimeError("arkern.distributed: this torch build has no torch.distributed")
    if dist.is_initialized():
        return False
    missing = [name for name in TORCHRUN_ENV if name not in os.environ]
    if missing:
        raise RuntimeError(f"arkern.distributed: no process group is initialised and {', '.join(missing)} "
                           f"{'is' if len(missing) == 1 else 'are'} not set; start the program with "
                           f"`torchrun --nproc_per_node=N ...` or call torch.distributed.init_process_group first")
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device if device.index is not None else int(os.environ.get("LOCAL_RANK", 0)))
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, init_method="env://", timeout=_as_timedelta(timeout))
    return True


# ---------------------------------------------------------------- collectives with bounded waits

class _Comm:
    """The group, this rank, the device collectives run on, and the timeout every wait is bounded by."""

    def __init__(self, group: dist.ProcessGroup | None, device: torch.device, timeout: timedelta | None) -> None:
        self.group = group if group is not None else dist.group.WORLD
        self.rank = dist.get_rank(self.group)
        if self.rank < 0:
            raise ValueError("generate_distributed: this process is not a member of `group`")
        self.world = dist.get_world_size(self.group)
        self.root = dist.get_global_rank(self.group, 0)  # group rank 0, as a global rank
        self.timeout = timeout
        backend = str(dist.get_backend(self.group)).lower()
        self.gloo = "gloo" in backend
        if device.type == "cuda" and "nccl" in backend:
            self.device = device
        elif backend == "nccl":
            self.device = torch.device("cuda", torch.cuda.current_device())
        else:
            self.device = torch.device("cpu")

    def _fail(self, what: str, err: Exception) -> DistributedSamplingError:
        return DistributedSamplingError(
            f"generate_distributed: rank {self.rank} of {self.world}: {what} failed ({err}). Another rank "
            f"crashed, hangs, or did not call generate_distributed with the same group; see its log")

    def wait(self, work: dist.Work, what: str, timeout: timedelta | None) -> None:
        """Wait for `work`, at most `timeout` (None: the group's own timeout)."""
        try:
            if timeout is None:
                work.wait()
            elif not work.wait(timeout=timeout):
                raise RuntimeError(f"no answer within {timeout.total_seconds():g} s")
        except RuntimeError as err:
            raise self._fail(what, err) from err

    def barrier(self, what: str, timeout: timedelta | None) -> None:
        """On gloo, a monitored barrier: it times out without leaving a pending collective behind and names
        the ranks that did not arrive. Other backends rely on the timed wait of the exchange that follows."""
        if not self.gloo:
            return
        try:
            dist.monitored_barrier(group=self.group, timeout=timeout, wait_all_ranks=True)
        except RuntimeError as err:
            raise self._fail(what, err) from err

    def exchange(self, obj: object, what: str, timeout: timedelta | None) -> list:
        """All-gather one JSON-serialisable object per rank (status messages, not the results)."""
        payload = torch.frombuffer(bytearray(json.dumps(obj).encode()), dtype=torch.uint8).to(self.device)
        size = torch.tensor([payload.numel()], dtype=torch.int64, device=self.device)
        sizes = [torch.empty_like(size) for _ in range(self.world)]
        self.wait(dist.all_gather(sizes, size, group=self.group, async_op=True), what, timeout)
        n = max(int(s) for s in sizes)
        padded = torch.zeros(n, dtype=torch.uint8, device=self.device)
        padded[: payload.numel()] = payload
        received = [torch.empty_like(padded) for _ in range(self.world)]
        self.wait(dist.all_gather(received, padded, group=self.group, async_op=True), what, timeout)
        return [json.loads(bytes(r[: int(s)].tolist()).decode()) for r, s in zip(received, sizes)]

    def broadcast(self, tensor: torch.Tensor, what: str) -> torch.Tensor:
        """`tensor` of group rank 0 on every rank (same shape and dtype on all ranks)."""
        buf = tensor.to(self.device)
        self.wait(dist.broadcast(buf, src=self.root, group=self.group, async_op=True), what, self.timeout)
        return buf.to(tensor.device)

    def gather_rows(self, part: torch.Tensor, rows: list[tuple[int, int]], what: str) -> torch.Tensor | None:
        """Concatenate every rank's `part` (rows of that rank, same trailing shape) on group rank 0.

        gloo's gather needs equal sizes: each part is zero-padded to the largest slice and trimmed after."""
        pad = max(stop - start for start, stop in rows)
        buf = torch.zeros((pad, *part.shape[1:]), dtype=part.dtype, device=self.device)
        buf[: part.shape[0]] = part
        parts = [torch.empty_like(buf) for _ in range(self.world)] if self.rank == 0 else None
        self.wait(dist.gather(buf, parts, dst=self.root, group=self.group, async_op=True), what, self.timeout)
        if parts is None:
            return None
        return torch.cat([p[: stop - start] for p, (start, stop) in zip(parts, rows)])


# ---------------------------------------------------------------- noise, per-row arguments, fingerprints

def _full_noise(model: torch.nn.Module, batch_size: int, kwargs: dict, rank: int) -> tuple[torch.Tensor, bool]:
    """The noise of the whole batch, prepared exactly as :func:`arkern.sampling.generate` prepares it (pops
    generator, seed and noise from `kwargs`). Returns (noise, from_rank0): without generator, seed and noise,
    only rank 0's draw counts (each rank's global generator is its own) and the caller broadcasts it."""
    generator, seed, noise = kwargs.pop("generator", None), kwargs.pop("seed", None), kwargs.pop("noise", None)
    warpers = {k: kwargs[k] for k in ("temperature", "top_k", "top_p") if k in kwargs}
    run = sampling.prepare_run(model, batch_size, length=kwargs.get("length"), shape=kwargs.get("shape"),
                               method=kwargs.get("method"), generator=generator, seed=seed, noise=noise,
                               who="generate_distributed", **warpers)
    if run.noise is not None:
        return run.noise, False
    if rank == 0:
        return sampling.draw_run_noise(model, run.noise_shape), True
    return torch.empty(run.noise_shape, dtype=torch.float64, device=next(model.parameters()).device), True


def _rows_of(name: str, value: object, batch_size: int, start: int, stop: int) -> object:
    """Argument `name` restricted to rows [start, stop) if it is per-row: a tensor whose first dimension is
    `batch_size` (also inside a dict, such as WaveNet's {"local": ..., "global": ...} condition), or a
    `condition` list of batch_size labels. Anything else is shared by all rows and passed unchanged."""
    if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == batch_size:
        return value[start:stop]
    if name == "condition" and isinstance(value, (list, tuple)) and len(value) == batch_size:
        return value[start:stop]
    if isinstance(value, Mapping):
        return {k: _rows_of(name, v, batch_size, start, stop) for k, v in value.items()}
    return value


def _digest(*tensors: torch.Tensor, header: str = "") -> str:
    h = hashlib.blake2b(header.encode(), digest_size=12)
    for t in tensors:
        t = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{t.dtype}{t.numel()};".encode())
        h.update(t.view(torch.uint8).numpy())
    return h.hexdigest()


def _fingerprint(model: torch.nn.Module, batch_size: int, noise: torch.Tensor | None, kwargs: dict
                 ) -> dict[str, str]:
    """Short digests of what must be equal on every rank for the gathered batch to be one run's
    (noise None: it is broadcast from rank 0)."""
    state = model.state_dict()
    args: dict[str, object] = {"model type": type(model).__qualname__, "batch_size": batch_size}
    tensors = []
    for name, value in sorted(kwargs.items()):
        if name in _LOCAL_ONLY:
            continue
        items = sorted(value.items()) if isinstance(value, Mapping) else [(None, value)]
        for key, v in items:
            label = name if key is None else f"{name}.{key}"
            if isinstance(v, torch.Tensor):
                args[label] = f"tensor{tuple(v.shape)}"
                tensors.append(v)
            elif v is None or isinstance(v, (bool, int, float, str, torch.dtype, tuple, list)):
                args[label] = repr(v)
    return {
        "model weights": _digest(*state.values(), header=repr([(k, tuple(v.shape)) for k, v in state.items()])),
        "noise": "broadcast from rank 0" if noise is None else _digest(noise),
        "arguments": _digest(*tensors, header=repr(sorted(args.items()))),
    }


_HINTS = {"model weights": "every rank must load the same weights",
          "noise": "use the same seed (or generators in the same state, or the same noise) on every rank",
          "arguments": "every rank must pass the same batch size, size and sampling arguments"}


def _raise_failures(statuses: list[dict], own_error: BaseException | None, stage: str) -> None:
    """After an exchange of statuses: raise this rank's own error, or report the other ranks' errors."""
    failed = [(r, s["error"]) for r, s in enumerate(statuses) if s.get("error") is not None]
    if own_error is not None:
        raise own_error
    if failed:
        raise DistributedSamplingError(f"generate_distributed: {stage} failed on " +
                                       "; ".join(f"rank {r}: {msg}" for r, msg in failed))


def _check_same(fingerprints: list[dict[str, str]]) -> None:
    for what in fingerprints[0]:
        differ = [r for r, f in enumerate(fingerprints) if f[what] != fingerprints[0][what]]
        if differ:
            raise ValueError(f"generate_distributed: the {what} of rank(s) {differ} differ from rank 0's "
                             f"({_HINTS[what]})")


# ---------------------------------------------------------------- the entry point

def generate_distributed(model: torch.nn.Module, batch_size: int, *, group: dist.ProcessGroup | None = None,
                         timeout: float | timedelta | None = None, **generate_kwargs: object
                         ) -> torch.Tensor | tuple[torch.Tensor, ...] | None:
    """Sample `batch_size` sequences/images split across the ranks of a process group; gather on rank 0.

    Call it on every rank of `group` with the same model and arguments. The result on rank 0 is identical
    to ``arkern.generate(model, batch_size, **generate_kwargs)`` in one process (same seed, generator state
    or noise): rank r samples rows ``split_rows(batch_size, world_size)[r]`` of the batch with its slice of
    the full noise. Any batch size works with any number of ranks (ranks without rows only wait).

    Args:
        model: any model :func:`arkern.generate` samples; the same weights on every rank (checked).
        group: the process group (default: the default group). If no group is initialised and the
            torchrun environment is present, the default group is initialised from it, with gloo for a CPU
            model and nccl for a CUDA model (see :func:`init_process_group_from_env`); it stays initialised.
        timeout: seconds (or timedelta) a rank waits for the others at a synchronisation point before it
            raises :class:`DistributedSamplingError`: at the start, and after sampling (so it must exceed the
            difference between the ranks' run times; their row counts differ by at most one). Ranks without
            rows (world size > batch_size) wait for the others with the group's own timeout instead.
            None: the group's own timeout (torch's default: 30 min). When this function initialises the
            group, `timeout` is also the group's timeout.
        generate_kwargs: as for :func:`arkern.generate` (length/shape, method, temperature, top_k, top_p,
            generator, seed, noise, condition, callback, progress, family options). `noise`, `condition`
            and other per-row tensors (first dimension `batch_size`) are for the whole batch; each rank uses
            its rows. `generator` must be in the same state on every rank; without generator, seed and
            noise, rank 0 draws the noise from its global generator and broadcasts it. `callback` runs on
            each rank with that rank's rows; the progress bar is shown on rank 0 only.

    Returns:
        On group rank 0 what ``arkern.generate`` returns for the whole batch, on the model's device; None on
        the other ranks.

    Raises:
        ValueError on every rank if the ranks' model weights, noise or arguments differ. If preparing or
        sampling raised on some ranks: that exception there, :class:`DistributedSamplingError` naming the
        rank and error on the others. DistributedSamplingError when a rank crashed or did not answer within
        `timeout`; the group may then be unusable: destroy it (``torch.distributed.destroy_process_group()``).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"generate_distributed: batch_size must be an int >= 1, got {batch_size!r}")
    if "distributed" in generate_kwargs:
        raise TypeError("generate_distributed: unexpected argument 'distributed'")
    timeout = _as_timedelta(timeout)
    device = next(model.parameters()).device
    if group is None:
        init_process_group_from_env(device, timeout)
    comm = _Comm(group, device, timeout)
    rows = split_rows(batch_size, comm.world)
    start, stop = rows[comm.rank]

    # 1. local preparation; errors and fingerprints are exchanged so that every rank stops together
    kwargs = dict(generate_kwargs)
    noise, from_rank0 = None, False
    status: dict[str, object] = {"error": None}
    error: BaseException | None = None
    try:
        noise, from_rank0 = _full_noise(model, batch_size, kwargs, comm.rank)
        status["fingerprint"] = _fingerprint(model, batch_size, None if from_rank0 else noise, kwargs)
    except Exception as err:
        error, status["error"] = err, f"{type(err).__name__}: {err}"
    comm.barrier("waiting for all ranks to start", timeout)
    statuses = comm.exchange(status, "comparing the ranks' inputs", timeout)
    _raise_failures(statuses, error, "preparing")
    _check_same([s["fingerprint"] for s in statuses])
    if from_rank0:
        noise = comm.broadcast(noise, "broadcasting the noise from rank 0")

    # 2. sample this rank's rows
    out: object = None
    if stop > start:
        kwargs = {k: _rows_of(k, v, batch_size, start, stop) for k, v in kwargs.items()}
        kwargs["progress"] = bool(kwargs.get("progress", True)) and comm.rank == 0
        try:
            out = sampling.generate(model, stop - start, noise=noise[start:stop], **kwargs)
        except Exception as err:  # reported to the other ranks below, then re-raised here
            error = err
    outputs = None if out is None else list(out) if isinstance(out, tuple) else [out]
    status = {"error": None if error is None else f"{type(error).__name__}: {error}",
              "tuple": isinstance(out, tuple),
              "outputs": None if outputs is None else [[str(t.dtype), list(t.shape[1:])] for t in outputs]}
    # ranks without rows wait for the whole run: bounded by the group's timeout, not the call's
    wait_for_others = timeout if stop > start else None
    comm.barrier("waiting for the other ranks to finish sampling", wait_for_others)
    statuses = comm.exchange(status, "collecting the ranks' results", wait_for_others)
    _raise_failures(statuses, error, "sampling")
    spec, as_tuple = statuses[0]["outputs"], statuses[0]["tuple"]  # rank 0 always has rows
    if any(s["outputs"] not in (None, spec) or (s["outputs"] and s["tuple"] != as_tuple) for s in statuses):
        raise DistributedSamplingError(f"generate_distributed: the ranks returned different kinds of results: "
                                       f"{[s['outputs'] for s in statuses]}")

    # 3. gather on rank 0
    gathered = []
    for i, (dtype_name, tail) in enumerate(spec):
        dtype = getattr(torch, dtype_name.removeprefix("torch."))
        part = outputs[i].to(comm.device) if outputs is not None else \
            torch.empty((0, *tail), dtype=dtype, device=comm.device)
        gathered.append(comm.gather_rows(part, rows, f"gathering result {i} on rank 0"))
    if comm.rank != 0:
        return None
    gathered = [t.to(device) for t in gathered]
    return tuple(gathered) if as_tuple else gathered[0]
