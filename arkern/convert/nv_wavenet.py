"""Source ``"nv-wavenet"``: the PyTorch training model of NVIDIA/nv-wavenet (``pytorch/wavenet.py``) as
:class:`arkern.models.WaveNet`.

Config: its constructor's keyword arguments ``n_in_channels, n_layers, max_dilation, n_residual_channels,
n_skip_channels, n_out_channels, n_cond_channels, upsamp_window, upsamp_stride`` (``dropout`` ignored), plus
``sample_rate`` for the model's meta. Keys: ``embed`` (n_in × R), ``upsample`` (ConvTranspose1d(C, C, window,
stride)), ``cond_layers.conv`` (one 1×1 conv giving 2R per layer, layer-major), ``dilate_layers.i.conv``
(kernel 2), ``res_layers.i.conv`` (all layers but the last), ``skip_layers.i.conv``, ``conv_out.conv`` and
``conv_end.conv`` (no biases).

Sampling follows nv-wavenet's inference: sample t is drawn from y[t-1] (class 128 = μ-law 0 before the
sequence) and conditioning sample t (the upsampled features truncated to the length), the first layer's
input being the embedding of y[t-1] (nv-wavenet's ``embedding_prev`` is zero). Its training forward pairs
y[t] with conditioning sample t - 1 instead (it shifts the outputs by one), so ``log_prob`` and that training
loss differ by this one-sample shift of the conditioning.
"""

from __future__ import annotations

import torch

from arkern.convert.checkpoint import StateReader
from arkern.models.wavenet import WaveNet

SOURCE = "nv-wavenet"
REQUIRED = ("n_in_channels", "n_layers", "max_dilation", "n_residual_channels", "n_skip_channels",
            "n_out_channels", "n_cond_channels", "upsamp_window", "upsamp_stride")


def convert(state: dict[str, torch.Tensor], **config: object) -> WaveNet:
    """nv-wavenet state dict + constructor kwargs -> WaveNet (see the module docstring)."""
    unknown = set(config) - {*REQUIRED, "dropout", "sample_rate"}
    missing = [k for k in REQUIRED if k not in config]
    if unknown or missing:
        raise ValueError(f"arkern.convert({SOURCE!r}): config needs {list(REQUIRED)}; missing {missing}, "
                         f"unknown {sorted(unknown)}")
    n_in, L, R, S, A, C, W, stride = (int(config[k]) for k in (
        "n_in_channels", "n_layers", "n_residual_channels", "n_skip_channels", "n_out_channels",
        "n_cond_channels", "upsamp_window", "upsamp_stride"))
    if n_in != A:
        raise ValueError(f"arkern.convert({SOURCE!r}): n_in_channels ({n_in}) must equal n_out_channels ({A}): "
                         f"sampled classes are fed back")
    model = WaveNet(num_layers=L, max_dilation=int(config["max_dilation"]), residual_channels=R, skip_channels=S,
                    num_classes=A, input="embedding", head_bias=False, cond_channels=C, cond_hop=stride,
                    upsample="convt1d", upsample_window=W)
    r = StateReader(state, SOURCE)
    out = {"embed_cur.weight": r.take("embed.weight", (A, R)),
           "upsampler.layers.0.weight": r.take("upsample.weight", (C, C, W)),
           "upsampler.layers.0.bias": r.take("upsample.bias", (C,)),
           "cond_proj.weight": r.take("cond_layers.conv.weight", (L * 2 * R, C, 1))[:, :, 0],
           "cond_proj.bias": r.take("cond_layers.conv.bias", (L * 2 * R,)),
           "out.weight": r.take("conv_out.conv.weight", (A, S, 1)),
           "end.weight": r.take("conv_end.conv.weight", (A, A, 1))}
    for i in range(L):
        out[f"dilated.{i}.weight"] = r.take(f"dilate_layers.{i}.conv.weight", (2 * R, R, 2))
        out[f"dilated.{i}.bias"] = r.take(f"dilate_layers.{i}.conv.bias", (2 * R,))
        if i < L - 1:
            out[f"res.{i}.weight"] = r.take(f"res_layers.{i}.conv.weight", (R, R, 1))
            out[f"res.{i}.bias"] = r.take(f"res_layers.{i}.conv.bias", (R,))
        out[f"skip.{i}.weight"] = r.take(f"skip_layers.{i}.conv.weight", (S, R, 1))
        out[f"skip.{i}.bias"] = r.take(f"skip_layers.{i}.conv.bias", (S,))
    r.finish()
    model.load_state_dict(out, strict=True)
    model.meta = {"kind": "audio", "encoding": "mulaw"}
    if "sample_rate" in config:
        model.meta["sample_rate"] = int(config["sample_rate"])
    return model
