"""The AMX tile layout of a bfloat16 matrix (VNNI pairs), read by the C++ samplers' tile kernels (csrc/cpu/amx.h).

A matrix W (Mp × N, Mp a multiple of 16) is cut into blocks of 16 outputs × 32 inputs (inputs zero-padded to a
multiple of 32); each block is one 1 KB tile of 16 rows, row r holding the pairs of inputs 2r, 2r + 1 of the 16
outputs: ``tile[r, 2q + p] = W[o0 + q, k0 + 2r + p]``. Blocks are stored output block by output block, inputs
fastest. The fused samplers get these copies next to their usual packed weights (when the CPU has AMX) and use
them only for bfloat16 models at the ``amx`` instruction level (:func:`arkern.backends.cpu_isa`); the
numbers are the same bfloat16 values, so the layout never changes results beyond the order of float32 sums.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pad32(n: int) -> int:
    """n rounded up to a multiple of 32 (the tiles' input padding)."""
    return (n + 31) // 32 * 32


def packed_size(mp: int, n: int) -> int:
    """bfloat16 elements of the tiles of an (mp × n) matrix."""
    return mp * pad32(n)


def pack_vnni(w: torch.Tensor) -> torch.Tensor:
    """W (Mp × N), Mp a multiple of 16, any float dtype -> its flat bfloat16 tiles (Mp · pad32(N) elements)."""
    mp, n = w.shape
    if mp % 16:
        raise ValueError(f"pack_vnni: the rows of W must be a multiple of 16, got {mp}")
    wp = F.pad(w.to(torch.bfloat16), (0, pad32(n) - n))
    # (ob, q, kb, r, p) -> (ob, kb, r, q, p)
    return wp.reshape(mp // 16, 16, pad32(n) // 32, 16, 2).permute(0, 2, 3, 1, 4).reshape(-1).contiguous()


def unpack_vnni(tiles: torch.Tensor, mp: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_vnni`: flat tiles -> W (Mp × N), bfloat16."""
    w = tiles.reshape(mp // 16, pad32(n) // 32, 16, 16, 2).permute(0, 3, 1, 2, 4).reshape(mp, pad32(n))
    return w[:, :n]


__all__ = ["pack_vnni", "unpack_vnni", "packed_size", "pad32"]
