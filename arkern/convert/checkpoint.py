"""Reading other projects' PyTorch checkpoints safely, and taking them apart key by key.

A checkpoint is read with ``torch.load(..., weights_only=True)`` only: tensors and plain containers, never
code. Files that pickle whole modules (``torch.save(model)``) are refused with the one-line recipe a user who
trusts the file runs to extract a state dict. :class:`StateReader` hands a converter one tensor at a time and
makes every mismatch name the key with the expected and the found shape; keys nobody took are an error too,
so a checkpoint of a different configuration never loads half-right.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterable, Mapping, Sequence

import torch

# top-level keys under which training scripts nest the model's state dict (wavenet_vocoder: "state_dict")
NESTED_KEYS = ("state_dict", "model", "model_state_dict", "net", "state")


def read_state_dict(checkpoint: str | os.PathLike | Mapping[str, object] | torch.nn.Module) -> dict[str, torch.Tensor]:
    """A flat ``{key: tensor}`` state dict from a checkpoint path, a (possibly nested) dict or a module.

    Unwraps one level of nesting (``{"state_dict": {...}, "global_step": ...}`` and the other NESTED_KEYS)
    and strips the ``module.`` prefix that ``nn.DataParallel`` / DDP add to every key.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file is not a torch checkpoint, pickles code (a whole module), or holds no state dict.
    """
    if isinstance(checkpoint, torch.nn.Module):
        state: object = checkpoint.state_dict()
        where = type(checkpoint).__name__
    elif isinstance(checkpoint, Mapping):
        state, where = checkpoint, "the state dict"
    elif isinstance(checkpoint, (str, os.PathLike)):
        where = os.fspath(checkpoint)
        if not os.path.isfile(where):
            raise FileNotFoundError(f"arkern.convert: no checkpoint file {where!r}")
        state = _torch_load(where)
    else:
        raise TypeError(f"arkern.convert: checkpoint must be a path, a state dict or a module, got "
                        f"{type(checkpoint).__name__}")
    if not isinstance(state, Mapping):
        raise ValueError(f"arkern.convert: {where} holds a {type(state).__name__}, not a state dict")
    if not _is_state(state):
        nested = [k for k in NESTED_KEYS if isinstance(state.get(k), Mapping) and _is_state(state[k])]
        if not nested:
            bad = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
            raise ValueError(f"arkern.convert: {where} is not a state dict (key {bad!r} holds a "
                             f"{type(state[bad]).__name__}) and has none under {', '.join(NESTED_KEYS)}")
        state = state[nested[0]]
    flat = {str(k): v for k, v in state.items()}
    if flat and all(k.startswith("module.") for k in flat):
        flat = {k[len("module."):]: v for k, v in flat.items()}
    return flat


def _is_state(mapping: Mapping) -> bool:
    return len(mapping) > 0 and all(isinstance(v, torch.Tensor) for v in mapping.values())


def _torch_load(path: str) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"arkern.convert: {path} is not a plain weights file: it pickles code or objects, which arkern never "
            f"loads ({str(e).splitlines()[0]}). If you trust the file, extract its state dict once with "
            f"`torch.save(torch.load({path!r}, weights_only=False).state_dict(), 'weights.pt')` (for a dict "
            f"holding a module, take that module's .state_dict()) and convert weights.pt") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise ValueError(f"arkern.convert: {path} is not a readable torch checkpoint ({e})") from None


class StateReader:
    """Take tensors out of a foreign state dict by key, checking shapes; :meth:`finish` rejects leftovers.

    ``source`` names the upstream project in messages. Keys are read relative to nothing (full keys).
    """

    def __init__(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        self.state = dict(state)
        self.source = source
        self.taken: set[str] = set()

    def __contains__(self, key: str) -> bool:
        return key in self.state

    def has_prefix(self, prefix: str) -> bool:
        """Whether any key starts with `prefix`."""
        return any(k.startswith(prefix) for k in self.state)

    def take(self, key: str, shape: Sequence[int] | None = None) -> torch.Tensor:
        """The float32 tensor under `key` (checked against `shape`; -1 matches any size)."""
        if key not in self.state:
            near = sorted(k for k in self.state if k.rsplit(".", 1)[0] == key.rsplit(".", 1)[0])[:6]
            hint = f"; keys with that prefix: {near}" if near else ""
            raise ValueError(f"arkern.convert({self.source!r}): missing key {key!r} (expected shape "
                             f"{_fmt(shape)}){hint}")
        t = self.state[key]
        if shape is not None and (t.dim() != len(shape)
                                  or any(s not in (-1, n) for s, n in zip(shape, t.shape))):
            raise ValueError(f"arkern.convert({self.source!r}): key {key!r} has shape {tuple(t.shape)}, expected "
                             f"{_fmt(shape)} for the given config")
        self.taken.add(key)
        return t.detach().to(torch.float32)

    def take_optional(self, key: str, shape: Sequence[int] | None = None) -> torch.Tensor | None:
        """Like :meth:`take`, but None when the key is absent (biases that a config may leave out)."""
        return self.take(key, shape) if key in self.state else None

    def take_weight(self, prefix: str, shape: Sequence[int], *, norm_dim: int = 0) -> torch.Tensor:
        """``prefix.weight``, or weight norm folded: ``weight_g * weight_v / ||weight_v||``.

        Reads old-style ``prefix.weight_g`` / ``prefix.weight_v`` and new-style
        ``prefix.parametrizations.weight.original0`` / ``original1``; the norm is taken over every dim but
        `norm_dim` (``torch.nn.utils.weight_norm``'s ``dim``; its default 0 is the *input* channel of a
        ConvTranspose, whose weight is (in, out, ...)).
        """
        for g_key, v_key in ((f"{prefix}.weight_g", f"{prefix}.weight_v"),
                             (f"{prefix}.parametrizations.weight.original0",
                              f"{prefix}.parametrizations.weight.original1")):
            if v_key in self.state or g_key in self.state:  # a lone weight_g: name the missing weight_v
                v = self.take(v_key, shape)
                g_shape = [1] * len(shape)
                g_shape[norm_dim] = shape[norm_dim]
                g = self.take(g_key, g_shape if g_key in self.state and self.state[g_key].dim() > 1 else None)
                return fold_weight_norm(g, v, norm_dim)
        return self.take(f"{prefix}.weight", shape)

    def skip(self, keys: Iterable[str]) -> None:
        """Mark keys as deliberately unused (buffers such as masks or ``num_batches_tracked``)."""
        self.taken.update(k for k in keys if k in self.state)

    def finish(self) -> None:
        """Raise if the checkpoint holds keys the converter did not take (a different configuration)."""
        left = sorted(set(self.state) - self.taken)
        if left:
            shown = ", ".join(f"{k} {tuple(self.state[k].shape)}" for k in left[:8])
            more = f" and {len(left) - 8} more" if len(left) > 8 else ""
            raise ValueError(f"arkern.convert({self.source!r}): unexpected keys for the given config: "
                             f"{shown}{more}")


def fold_weight_norm(g: torch.Tensor, v: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``g * v / ||v||``, the norm over every dim of v but `dim`. g: any shape with v.shape[dim] elements."""
    dims = [d for d in range(v.dim()) if d != dim]
    norm = torch.linalg.vector_norm(v, dim=dims, keepdim=True) if dims else v.abs()
    shape = [1] * v.dim()
    shape[dim] = v.shape[dim]
    return v * (g.reshape(shape) / norm)


def fold_batchnorm(weight: torch.Tensor, bias: torch.Tensor | None, mean: torch.Tensor, var: torch.Tensor,
                   gamma: torch.Tensor | None, beta: torch.Tensor | None,
                   eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """A conv (weight (Cout, ...), bias) followed by eval-mode BatchNorm -> one conv's (weight, bias)."""
    scale = (gamma if gamma is not None else torch.ones_like(mean)) / torch.sqrt(var + eps)
    shift = beta if beta is not None else torch.zeros_like(mean)
    b = bias if bias is not None else torch.zeros_like(mean)
    w = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    return w, (b - mean) * scale + shift


def image_shape(source: str, shape: object) -> list[int]:
    """A source's ``shape`` config (the image size its models sample by default) -> [H, W], validated."""
    if not (isinstance(shape, (tuple, list)) and len(shape) == 2
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape)):
        raise ValueError(f"arkern.convert({source!r}): shape must be (height, width) with ints >= 1, got {shape!r}")
    return [int(shape[0]), int(shape[1])]


def _fmt(shape: Sequence[int] | None) -> str:
    if shape is None:
        return "any"
    return "(" + ", ".join("*" if s == -1 else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
