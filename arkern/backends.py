"""Which backends exist, which are available here, and how one is chosen for a call.

Backends, in the order tried for each device:

    CUDA tensors: cuda  > triton > reference
    CPU tensors:  cpu   > reference          (triton only when forced, and only with TRITON_INTERPRET=1)

Each op family declares, per backend, the kernel it has, the dtypes it takes and a function returning
readable reasons why it cannot run particular inputs (xformers-style `not_supported_reasons`). A call
with ``backend=None`` takes the first eligible backend; ``ARKERN_BACKEND`` forces one for every call
that does not name its own; a forced backend that cannot run the inputs raises
:class:`BackendUnavailableError` listing every reason. arkern never falls back silently: the backend
that ran is logged at debug level and kept for :func:`last_backend`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from arkern._ext import load_extension

log = logging.getLogger("arkern")

BACKENDS: tuple[str, ...] = ("reference", "cpu", "triton", "cuda")
_PRIORITY: dict[str, tuple[str, ...]] = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")}
_last: dict[str, str] = {}


class BackendUnavailableError(RuntimeError):
    """A backend was asked for (or none was eligible) but cannot run these inputs."""


def triton_interpret() -> bool:
    """True when Triton kernels run on CPU tensors through the interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def backend_unavailable_reason(name: str, device_type: str) -> str | None:
    """Why backend `name` cannot run on `device_type` at all here (None if it can)."""
    if name == "reference":
        return None
    if name == "cpu":
        if device_type != "cpu":
            return f"the 'cpu' backend runs CPU tensors only (got {device_type} tensors)"
        return load_extension()
    if name == "triton":
        if importlib.util.find_spec("triton") is None:
            return "Triton is not installed (pip install triton)"
        if device_type == "cpu" and not triton_interpret():
            return "Triton runs CPU tensors only in the interpreter (set TRITON_INTERPRET=1)"
        if device_type not in ("cpu", "cuda"):
            return f"Triton runs CUDA tensors (got {device_type} tensors)"
        return None
    if name == "cuda":
        if device_type != "cuda":
            return f"the 'cuda' backend runs CUDA tensors only (got {device_type} tensors)"
        if torch.version.cuda is None:
            return "this torch build has no CUDA support"
        return load_extension()
    raise ValueError(f"backend must be one of {BACKENDS} or None, got {name!r}")


def available_backends(device_type: str = "cpu") -> list[str]:
    """Backends that can run on `device_type` here, including a forced-only Triton interpreter."""
    return [b for b in BACKENDS if backend_unavailable_reason(b, device_type) is None]


@dataclass(frozen=True)
class Kernel:
    """One backend's implementation of an op family entry point.

    fn: the callable run for this backend (same arguments as the public function, minus `backend`).
    dtypes: floating dtypes it accepts.
    check: optional ``check(**params) -> list[str]`` of reasons it cannot run particular inputs.
    torch_op: qualified name (e.g. "arkern::causal_conv1d") whose kernel must be registered for the
        device's dispatch key, so that a partially built extension is reported precisely.
    """

    backend: str
    fn: Callable
    dtypes: frozenset
    check: Callable[..., list[str]] | None = None
    torch_op: str | None = None


@dataclass
class OpBackends:
    """The table of backends for one public op."""

    name: str
    kernels: dict[str, Kernel] = field(default_factory=dict)
    _cache: dict[tuple, tuple[str, ...]] = field(default_factory=dict, repr=False)

    def register(self, backend: str, fn: Callable, dtypes: Sequence[torch.dtype], *,
                 check: Callable[..., list[str]] | None = None, torch_op: str | None = None) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}")
        self.kernels[backend] = Kernel(backend, fn, frozenset(dtypes), check, torch_op)
        self._cache.clear()

    def not_supported_reasons(self, backend: str, device: torch.device, dtype: torch.dtype,
                              **params: object) -> list[str]:
        """Readable reasons why `backend` cannot run this call (empty when it can)."""
        reasons = list(self._static_reasons(backend, device.type))
        if reasons:
            return reasons
        kernel = self.kernels[backend]
        if dtype not in kernel.dtypes:
            names = ", ".join(sorted(str(d).replace("torch.", "") for d in kernel.dtypes))
            reasons.append(f"dtype {str(dtype).replace('torch.', '')} is not supported (supported: {names})")
        if kernel.check is not None:
            reasons.extend(kernel.check(**params))
        return reasons

    def _static_reasons(self, backend: str, device_type: str) -> tuple[str, ...]:
        # Reasons that depend only on the machine, computed once and cached, so that the per-call
        # selection is plain dict look-ups that torch.compile traces without graph breaks.
        key = (backend, device_type, triton_interpret())
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        kernel = self.kernels.get(backend)
        reasons: list[str] = []
        if kernel is None:
            reasons.append(f"{self.name} has no {backend!r} kernel")
        else:
            reason = backend_unavailable_reason(backend, device_type)
            if reason is not None:
                reasons.append(reason)
            elif kernel.torch_op is not None and backend in ("cpu", "cuda"):
                dk = "CPU" if device_type == "cpu" else "CUDA"
                if not torch._C._dispatch_has_kernel_for_dispatch_key(kernel.torch_op, dk):
                    reasons.append(f"the compiled extension has no {dk} kernel for {kernel.torch_op}")
        self._cache[key] = tuple(reasons)
        return self._cache[key]

    def warm(self) -> None:
        """Fill the availability cache for CPU (and CUDA when present) ahead of torch.compile."""
        for device_type in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
            for backend in BACKENDS:
                self._static_reasons(backend, device_type)

    def select(self, backend: str | None, device: torch.device, dtype: torch.dtype,
               **params: object) -> Kernel:
        """Choose the kernel for a call: the forced backend, or the first eligible one."""
        forced = backend or forced_backend()
        if forced is not None:
            if forced not in BACKENDS:
                raise ValueError(f"{self.name}: backend must be one of {BACKENDS} or None, got {forced!r}")
            reasons = self.not_supported_reasons(forced, device, dtype, **params)
            if reasons:
                raise BackendUnavailableError(
                    f"{self.name}: backend {forced!r} cannot run this call:\n  - " + "\n  - ".join(reasons))
            return self._chosen(self.kernels[forced])
        tried = []
        for name in _PRIORITY.get(device.type, ("reference",)):
            reasons = self.not_supported_reasons(name, device, dtype, **params)
            if not reasons:
                return self._chosen(self.kernels[name])
            tried.append(f"{name}: " + "; ".join(reasons))
        raise BackendUnavailableError(f"{self.name}: no backend can run this call:\n  - " + "\n  - ".join(tried))

    def _chosen(self, kernel: Kernel) -> Kernel:
        if not torch.compiler.is_compiling():
            if _last.get(self.name) != kernel.backend:
                log.debug("arkern: %s runs on backend %r", self.name, kernel.backend)
            _last[self.name] = kernel.backend
        return kernel


_env: dict[str, str | None] = {"ARKERN_BACKEND": os.environ.get("ARKERN_BACKEND") or None}


def forced_backend() -> str | None:
    """The backend forced by the ARKERN_BACKEND environment variable, if any."""
    if not torch.compiler.is_compiling():  # read the environment eagerly; compiled code sees the last value
        _env["ARKERN_BACKEND"] = os.environ.get("ARKERN_BACKEND") or None
    return _env["ARKERN_BACKEND"]


def last_backend(op: str) -> str | None:
    """The backend that ran the most recent eager call of `op` (e.g. "masked_conv2d"), or None."""
    return _last.get(op)


# ---------------------------------------------------------------- the CPU kernels' instruction set

CPU_ISAS: tuple[str, ...] = ("avx2", "avx512", "amx")


def cpu_isas() -> dict[str, str | None]:
    """Each instruction-set level of the fused CPU samplers -> None if usable here, else why not.

    Levels (csrc/cpu/isa.h): "avx2" (the portable code paths), "avx512" (the hand-written AVX-512 kernels,
    in builds for an AVX-512 target), "amx" (AMX-BF16 tiles for the batched products of bfloat16 models; the
    CPU must have amx_tile + amx_bf16 and the OS must grant the tile state). Without the compiled extension
    every level is unavailable, with that reason.
    """
    reason = load_extension()
    if reason is not None:
        return dict.fromkeys(CPU_ISAS, reason)
    status = torch.ops.arkern.cpu_isa_status()
    return {name: (why or None) for name, why in zip(CPU_ISAS, status[1:])}


def cpu_isa() -> str | None:
    """The level the fused CPU samplers use now: ``ARKERN_ISA`` or :func:`set_cpu_isa` if given, else the
    best available; None without the compiled extension.

    Raises:
        RuntimeError: ``ARKERN_ISA`` names an unknown level or one this machine or build lacks (with why).
    """
    if load_extension() is not None:
        return None
    return torch.ops.arkern.cpu_isa_status()[0]


def set_cpu_isa(isa: str | None) -> str:
    """Force the level of the fused CPU samplers for this process ("avx2", "avx512" or "amx"); None returns to
    the default (``ARKERN_ISA``, else the best available). Returns the level now in use.

    Raises:
        ValueError: an unknown level name.
        BackendUnavailableError: the level is unavailable here (the message says why), or the extension is
            not built.
    """
    if isa is not None and isa not in CPU_ISAS:
        raise ValueError(f"set_cpu_isa: isa must be one of {CPU_ISAS} or None, got {isa!r}")
    reason = load_extension()
    if reason is not None:
        raise BackendUnavailableError(f"set_cpu_isa: {reason}")
    if isa is not None and cpu_isas()[isa] is not None:
        raise BackendUnavailableError(f"set_cpu_isa: {isa} is unavailable here: {cpu_isas()[isa]}")
    return torch.ops.arkern.set_cpu_isa(isa or "")


def last_cpu_isa(op: str) -> str | None:
    """The level the most recent CPU-kernel call of `op` (e.g. "wavenet_generate") ran its matrix products on
    ("amx" only for bfloat16 models with enough rows per group), or None before any call."""
    if load_extension() is not None:
        return None
    return torch.ops.arkern.last_cpu_isa(op) or None
