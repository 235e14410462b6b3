"""The `arkern` torch.library namespace. Every op family defines its schemas on LIB."""

import torch

LIB = torch.library.Library("arkern", "DEF")  # noqa: TOR901 - schemas are defined here, once


def optional_grads(grads: tuple, needs: tuple[bool, ...]) -> list:
    """Map the fixed-arity tuple a backward op returns to autograd's convention (None when not needed).

    Backward ops return an empty tensor for every gradient not asked for in their `output_mask`.
    """
    return [g if need else None for g, need in zip(grads, needs)]
