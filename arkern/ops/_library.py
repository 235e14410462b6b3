"""The `arkern` torch.library namespace. Every op family defines its schemas on LIB."""

import torch

LIB = torch.library.Library("arkern", "DEF")  # noqa: TOR901 - schemas are defined here, once


def optional_grads(grads: tuple, needs: tuple[bool, ...]) -> list:
    """Map the fixed-arity tuple a backward op returns to autograd's convention (None when not needed).

    Backward ops return an empty tensor for every gradient not asked for in their `output_mask`.
    """
    return [g if need else None for g, need in zip(grads, needs)]


def same_device(op: str, **tensors: object) -> None:
    """In fake (meta) kernels: every tensor argument on one device, as the real kernels require.

    A call mixing devices (e.g. a meta state with CPU inputs) dispatches to the fake kernel, which would
    otherwise return an uninitialised tensor on the first argument's device.
    """
    devices = {name: t.device for name, t in tensors.items() if isinstance(t, torch.Tensor)}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {d}" for name, d in devices.items())
        raise ValueError(f"{op}: all tensors must be on one device, got {listed}")
