"""Source ``"pytorch-wavenet"``: vincentherrmann/pytorch-wavenet's ``WaveNetModel`` as
:class:`arkern.models.WaveNet`.

Config: its constructor's keyword arguments ``layers`` (per block), ``blocks``, ``dilation_channels``,
``residual_channels``, ``skip_channels``, ``end_channels``, ``classes``, ``kernel_size``, ``bias``
(``output_length``, ``in_classes`` and ``dtype`` do not change the weights; ``dilation_factor`` must be 2),
plus ``sample_rate`` for the model's meta. Keys: ``start_conv`` (1×1 from one scalar), ``filter_convs.i`` and
``gate_convs.i`` (the tanh and sigmoid halves of a gated layer), ``residual_convs.i`` (the last one feeds
nothing), ``skip_convs.i``, ``end_conv_1``, ``end_conv_2`` (biased).

The network is fed the previous class c as the scalar c / classes · 2 - 1 (upstream's ``generate_fast``;
0.0 = class classes / 2 before the sequence); as a softmax model that is an embedding table, built here.
"""

from __future__ import annotations

import torch

from arkern.convert.checkpoint import StateReader
from arkern.models.wavenet import WaveNet

SOURCE = "pytorch-wavenet"
DEFAULTS = dict(layers=10, blocks=4, dilation_channels=32, residual_channels=32, skip_channels=256,
                end_channels=256, classes=256, kernel_size=2, bias=False)
IGNORED = ("output_length", "in_classes", "dtype", "dilation_factor", "sample_rate")


def convert(state: dict[str, torch.Tensor], **config: object) -> WaveNet:
    """pytorch-wavenet state dict + constructor kwargs -> WaveNet (see the module docstring)."""
    unknown = set(config) - set(DEFAULTS) - set(IGNORED)
    if unknown:
        raise ValueError(f"arkern.convert({SOURCE!r}): unknown config keys {sorted(unknown)}")
    if int(config.get("dilation_factor", 2)) != 2:
        raise ValueError(f"arkern.convert({SOURCE!r}): dilation_factor must be 2, got {config['dilation_factor']}")
    c = {**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS}}
    per_block, blocks = int(c["layers"]), int(c["blocks"])
    D, R, S, E, A, K = (int(c[k]) for k in ("dilation_channels", "residual_channels", "skip_channels",
                                             "end_channels", "classes", "kernel_size"))
    bias = bool(c["bias"])
    L = per_block * blocks
    model = WaveNet(num_layers=L, stacks=blocks, kernel_size=K, residual_channels=R, gate_channels=2 * D,
                    skip_channels=S, end_channels=E, num_classes=A, input="embedding", bias=bias)
    r = StateReader(state, SOURCE)

    def opt(key: str, n: int) -> dict[str, torch.Tensor]:
        return {} if not bias else {"bias": r.take(key, (n,))}

    w0 = r.take("start_conv.weight", (R, 1, 1))[:, 0, 0]
    b0 = r.take("start_conv.bias", (R,)) if bias else torch.zeros(R)
    values = torch.arange(A, dtype=torch.float32) / A * 2 - 1  # the scalar fed back for class c
    out = {"embed_cur.weight": values[:, None] * w0 + b0}
    for i in range(L):
        filt = r.take(f"filter_convs.{i}.weight", (D, R, K))
        gate = r.take(f"gate_convs.{i}.weight", (D, R, K))
        out[f"dilated.{i}.weight"] = torch.cat([filt, gate])
        if bias:
            out[f"dilated.{i}.bias"] = torch.cat([r.take(f"filter_convs.{i}.bias", (D,)),
                                                  r.take(f"gate_convs.{i}.bias", (D,))])
        if i < L - 1:
            out[f"res.{i}.weight"] = r.take(f"residual_convs.{i}.weight", (R, D, 1))
            out.update({f"res.{i}.{k}": v for k, v in opt(f"residual_convs.{i}.bias", R).items()})
        else:
            r.skip([k for k in r.state if k.startswith(f"residual_convs.{i}.")])
        out[f"skip.{i}.weight"] = r.take(f"skip_convs.{i}.weight", (S, D, 1))
        out.update({f"skip.{i}.{k}": v for k, v in opt(f"skip_convs.{i}.bias", S).items()})
    out["out.weight"] = r.take("end_conv_1.weight", (E, S, 1))
    out["out.bias"] = r.take("end_conv_1.bias", (E,))
    out["end.weight"] = r.take("end_conv_2.weight", (A, E, 1))
    out["end.bias"] = r.take("end_conv_2.bias", (A,))
    r.finish()
    model.load_state_dict(out, strict=True)
    model.meta = {"kind": "audio", "encoding": "mulaw"}
    if "sample_rate" in config:
        model.meta["sample_rate"] = int(config["sample_rate"])
    return model
