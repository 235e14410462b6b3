"""pclucas14/pixel-cnn-pp checkpoints -> :class:`arkern.models.PixelCNNpp`.

    model = arkern.convert.load("pcnn_cifar.pth", "pixel-cnn-pp",
                                nr_resnet=5, nr_filters=160, nr_logistic_mix=10, input_channels=3)

Config: the keyword arguments of upstream's ``PixelCNN(nr_resnet=5, nr_filters=80, nr_logistic_mix=10,
resnet_nonlinearity='concat_elu', input_channels=3)``, with its defaults (its CIFAR-10 run is 5 / 160 / 10 / 3,
its MNIST run input_channels=1), and ``shape``, the image size (H, W) the model was trained on, which upstream
keeps in main.py (default: its ``obs``, 32x32 for RGB, 28x28 for grey). ``shape`` becomes
``model.meta["shape"]``: the size ``arkern sample DIR`` draws and ``arkern eval`` expects.

Upstream ports openai/pixel-cnn, whose layout :class:`~arkern.models.PixelCNNpp` follows, so every upstream
layer has one arkern counterpart with the same math:

==========================================================  =============================================
upstream key prefix                                          PixelCNNpp attribute
==========================================================  =============================================
``u_init.conv``, ``ul_init.0.conv``, ``ul_init.1.conv``      ``u_init``, ``ul_init_down``, ``ul_init_right``
``up_layers.i.u_stream.j`` / ``ul_stream.j``                 ``up_u[i][j]`` / ``up_ul[i][j]``
``down_layers.i.u_stream.j`` / ``ul_stream.j``               ``dn_u[i][j]`` / ``dn_ul[i][j]``
  (gated_resnet: ``conv_input.conv``, ``nin_skip.lin_a``,       (``conv_in``, ``nin_aux``, ``conv_out``)
  ``conv_out.conv``)
``downsize_u_stream.i.conv``, ``downsize_ul_stream.i.conv``  ``down_u[i]``, ``down_ul[i]``
``upsize_u_stream.i.deconv``, ``upsize_ul_stream.i.deconv``  ``up_sample_u[i]``, ``up_sample_ul[i]``
``nin_out.lin_a``                                            ``out`` (rows permuted, see below)
==========================================================  =============================================

Facts this relies on (upstream's layers.py, model.py, utils.py, main.py):

- Every layer is ``torch.nn.utils.weight_norm``-ed with the default ``dim=0``: ``weight_g``/``weight_v`` are
  folded here into one weight. For a ConvTranspose2d (weight (in, out, kH, kW)) dim 0 is the *input* channel.
  Checkpoints from before upstream's "Fixed weight_norm bug" commit (April 2019) hold plain ``conv.weight``
  for the shifted convs (the weight norm was never applied to them); both spellings load, as do
  ``parametrizations.weight.original0/1`` and DataParallel's ``module.`` prefix.
- ``nin`` is a weight-normed ``nn.Linear`` over the channels: a 1x1 conv, weight (out, in) -> (out, in, 1, 1).
- The shifted convs pad exactly as :mod:`arkern.reference.shifted_conv2d` (also at stride 2), and the
  deconvs (``output_padding=1``, then rows ``[:H - kH + 1]`` and columns ``[(kW-1)//2 : W - (kW-1)//2]`` for
  ``down``, ``[:W - kW + 1]`` for ``down_right``) are ShiftedConvTranspose2d's crop.
- ``Dropout2d(0.5)`` inside the gated resnets is off at inference; the converted model has dropout 0.
- The input is the image scaled to [-1, 1] plus an all-ones channel, as PixelCNNpp feeds it. Upstream scales
  with ``ToTensor`` then ``(x - .5) * 2`` in float32, arkern with ``level * (2/255) - 1``: the two differ by
  at most 1.2e-7 (one float32 ulp) on 111 of the 256 levels, far below float32 tolerance on log p.
- Output layout. Upstream ``nin_out`` rows: M mixture logits, then for each colour c, [M means, M log-scales,
  M coefficients] (RGB) or [M means, M log-scales] (grey); log-scales clamped at -7, tanh on the
  coefficients, bins of half-width 1/255, tail mass in the edge bins (``discretized_mix_logistic_loss`` and
  ``_loss_1d``). arkern's :func:`arkern.distributions.discretized_logistic_mixture_log_prob` has the same math
  with the rows ordered parameter-major (all means, all log-scales, all coefficients), so the rows are
  permuted; for grey images arkern's layout has M more rows (unused by the likelihood and the samplers), set
  to zero here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from arkern.convert.checkpoint import StateReader
from arkern.models.pixelcnnpp import PixelCNNpp

__all__ = ["convert", "output_rows", "checkpoint_config"]

SOURCE = "pixel-cnn-pp"
CONFIG_KEYS = ("nr_resnet", "nr_filters", "nr_logistic_mix", "resnet_nonlinearity", "input_channels", "shape")
# upstream main.py: obs = (1, 28, 28) for MNIST, (3, 32, 32) for CIFAR-10
DEFAULT_SHAPE = {1: [28, 28], 3: [32, 32]}


def convert(state: Mapping[str, torch.Tensor], nr_resnet: int = 5, nr_filters: int = 80, nr_logistic_mix: int = 10,
            resnet_nonlinearity: str = "concat_elu", input_channels: int = 3,
            shape: tuple[int, int] | list[int] | None = None, **unknown: object) -> PixelCNNpp:
    """An upstream ``PixelCNN(...).state_dict()`` (flat, ``module.`` already stripped) -> PixelCNNpp (eval).

    The arguments and their defaults are upstream's constructor's, plus `shape` (H, W), multiples of 4
    (default: upstream main.py's size for `input_channels`).

    Raises:
        TypeError: a config key upstream's constructor does not take.
        ValueError: a config value upstream does not support, or a checkpoint that does not match the config
            (missing / unexpected key, wrong shape; the message names the key and both shapes, and the
            configuration the checkpoint's shapes point to).
    """
    if unknown:
        raise TypeError(f"arkern.convert({SOURCE!r}): unknown config key(s) {sorted(unknown)}; known: "
                        f"{', '.join(CONFIG_KEYS)} (upstream PixelCNN's arguments and the image shape)")
    for name, value, low in (("nr_resnet", nr_resnet, 0), ("nr_filters", nr_filters, 1),
                             ("nr_logistic_mix", nr_logistic_mix, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"arkern.convert({SOURCE!r}): {name} must be an int >= {low}, got {value!r}")
    if isinstance(input_channels, bool) or input_channels not in (1, 3):
        raise ValueError(f"arkern.convert({SOURCE!r}): input_channels must be 1 (its loss "
                         f"discretized_mix_logistic_loss_1d) or 3 (discretized_mix_logistic_loss), got "
                         f"{input_channels!r}")
    if resnet_nonlinearity != "concat_elu":
        raise ValueError(f"arkern.convert({SOURCE!r}): resnet_nonlinearity must be 'concat_elu' (the only one "
                         f"upstream supports), got {resnet_nonlinearity!r}")
    shape = DEFAULT_SHAPE[input_channels] if shape is None else shape
    if (not isinstance(shape, (list, tuple)) or len(shape) != 2
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 4 or s % 4 for s in shape)):
        raise ValueError(f"arkern.convert({SOURCE!r}): shape must be [height, width], positive multiples of 4 "
                         f"(two 2x down-samplings), got {shape!r}")
    model = PixelCNNpp(image_channels=input_channels, num_bins=256, filters=nr_filters, num_resnets=nr_resnet,
                       num_mixtures=nr_logistic_mix)
    reader = StateReader(state, SOURCE)
    try:
        _load(reader, model, nr_filters, nr_logistic_mix, input_channels)
        reader.finish()
    except ValueError as err:
        found = checkpoint_config(state)
        given = {"nr_resnet": nr_resnet, "nr_filters": nr_filters, "nr_logistic_mix": nr_logistic_mix,
                 "input_channels": input_channels}
        if found and any(found.get(k, v) != v for k, v in given.items()):
            hint = ", ".join(f"{k}={v}" for k, v in found.items())
            raise ValueError(f"{err} (the checkpoint's shapes point to {hint})") from None
        raise
    model.eval()
    model.meta = {"shape": list(shape)}
    return model


def _load(reader: StateReader, model: PixelCNNpp, f: int, m: int, c: int) -> None:
    def conv(prefix: str, layer: torch.nn.Conv2d) -> None:
        layer.weight.copy_(reader.take_weight(f"{prefix}.conv", tuple(layer.weight.shape)))
        layer.bias.copy_(reader.take(f"{prefix}.conv.bias", (layer.out_channels,)))

    def deconv(prefix: str, layer: torch.nn.ConvTranspose2d) -> None:
        # weight (in, out, kH, kW); weight_norm's dim=0 is the input channel
        layer.weight.copy_(reader.take_weight(f"{prefix}.deconv", tuple(layer.weight.shape), norm_dim=0))
        layer.bias.copy_(reader.take(f"{prefix}.deconv.bias", (layer.out_channels,)))

    def nin(prefix: str, layer: torch.nn.Conv2d) -> None:
        cout, cin = layer.weight.shape[:2]
        layer.weight.copy_(reader.take_weight(f"{prefix}.lin_a", (cout, cin)).reshape(cout, cin, 1, 1))
        layer.bias.copy_(reader.take(f"{prefix}.lin_a.bias", (cout,)))

    def resnet(prefix: str, block: torch.nn.Module) -> None:
        conv(f"{prefix}.conv_input", block.conv_in)
        if block.nin_aux is not None:
            nin(f"{prefix}.nin_skip", block.nin_aux)
        conv(f"{prefix}.conv_out", block.conv_out)

    conv("u_init", model.u_init)
    conv("ul_init.0", model.ul_init_down)
    conv("ul_init.1", model.ul_init_right)
    for i in range(3):
        for stage, u_blocks, ul_blocks in (("up_layers", model.up_u[i], model.up_ul[i]),
                                           ("down_layers", model.dn_u[i], model.dn_ul[i])):
            for j, block in enumerate(u_blocks):
                resnet(f"{stage}.{i}.u_stream.{j}", block)
            for j, block in enumerate(ul_blocks):
                resnet(f"{stage}.{i}.ul_stream.{j}", block)
    for i in range(2):
        conv(f"downsize_u_stream.{i}", model.down_u[i])
        conv(f"downsize_ul_stream.{i}", model.down_ul[i])
        deconv(f"upsize_u_stream.{i}", model.up_sample_u[i])
        deconv(f"upsize_ul_stream.{i}", model.up_sample_ul[i])
    rows = output_rows(c, m)
    w = reader.take_weight("nin_out.lin_a", (len(rows), f))
    b = reader.take("nin_out.lin_a.bias", (len(rows),))
    model.out.weight.zero_()
    model.out.bias.zero_()
    model.out.weight[: len(rows), :, 0, 0] = w[rows]
    model.out.bias[: len(rows)] = b[rows]


def output_rows(channels: int, num_mixtures: int) -> torch.Tensor:
    """Upstream's ``nin_out`` row for each of arkern's first (10 if RGB else 3) * M output rows (int64).

    Upstream: [M logits | colour 0: P params x M | colour 1 ... ] with P = 3 (mean, log-scale, coeff) for RGB,
    2 (mean, log-scale) for grey; arkern: [M logits | means of colours 0.. | log-scales of colours 0.. |
    RGB: coefficients 0, 1, 2] (:func:`arkern.distributions.mixture_params_size` rows; grey has M more,
    unused, left at zero).
    """
    m, p = num_mixtures, (3 if channels == 3 else 2)
    rows = list(range(m))
    for param in range(p):
        for colour in range(channels):
            rows += [m + colour * p * m + param * m + k for k in range(m)]
    return torch.tensor(rows, dtype=torch.int64)


def checkpoint_config(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """The configuration an upstream state dict's shapes point to ({} when they do not say), for messages."""
    found: dict[str, int] = {}
    init = state.get("u_init.conv.weight_v", state.get("u_init.conv.weight"))
    if isinstance(init, torch.Tensor) and init.dim() == 4:
        found["nr_filters"], found["input_channels"] = int(init.shape[0]), int(init.shape[1]) - 1
    blocks = {int(k.group(1)) for k in map(re.compile(r"up_layers\.0\.u_stream\.(\d+)\.").match, state) if k}
    if blocks or "u_init.conv.bias" in state:
        found["nr_resnet"] = max(blocks) + 1 if blocks else 0
    out = state.get("nin_out.lin_a.weight_v", state.get("nin_out.lin_a.weight"))
    if isinstance(out, torch.Tensor) and "input_channels" in found:
        per_mix = 3 if found["input_channels"] == 1 else 10
        if out.shape[0] % per_mix == 0:
            found["nr_logistic_mix"] = int(out.shape[0]) // per_mix
    return found
