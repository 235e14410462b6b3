"""PixelCNN (van den Oord et al. 2016): a 7x7 mask-A conv, residual blocks of 3x3 mask-B convs, a 1x1
mask-B head and per-channel K-way logits; RGB via colour groups (R sees nothing of the current pixel, G
sees its R, B sees its R and G).

Also :class:`CategoricalImageModel`, the small protocol every image model here implements so one raster
sampler (:func:`arkern.decode.image.sample_raster`) drives them all, naive or cached.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import arkern.nn as ann
from arkern.distributions import sample_categorical
from arkern.nn import Residual


class CategoricalImageModel(nn.Module):
    """Base of the image models with per-channel K-way softmax outputs, drawn one colour group at a time.

    The sampler protocol (see :mod:`arkern.decode.image`):
    - ``image_channels`` C, ``num_classes`` K, ``color_steps`` (sub-steps per pixel = C);
    - ``prepare(x)``: int levels (N, C, H, W) -> network input in ``input_range`` (same shape, float);
    - ``output_map(xf, condition)``: (N, C, H, W) float -> (N, D, H, W) raw outputs (the naive sampler);
    - the cached decoder (``reset``, ``start_row``, ``step``, ``commit``) is in :mod:`arkern.decode`, and the
      model's family (:mod:`arkern.families`) names it;
    - ``noise_shape(N, H, W)``, ``draw(out, u, step)``, ``check_image_size``, ``check_condition``.
    Output layout: D = C*K, channel c's logits are out[:, c*K:(c+1)*K] (colour group c of the last conv).
    """

    image_channels: int
    num_classes: int
    input_range: tuple[float, float] = (-1.0, 1.0)  # what levels 0 and K-1 become (evenly spaced between)

    @property
    def color_steps(self) -> int:
        return self.image_channels

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Integer levels (N, C, H, W) in [0, K) -> float input in ``input_range`` (parameter dtype).

        Level v becomes ``v * ((hi - lo) / (K - 1)) + lo``: 2v/(K-1) - 1 by default. Convs pad with zeros,
        so the range is part of the model, not a bias that could be folded into its first layer.
        """
        dtype = next(self.parameters()).dtype
        lo, hi = self.input_range
        return x.to(dtype) * ((hi - lo) / (self.num_classes - 1)) + lo

    def check_image(self, x: torch.Tensor) -> None:
        """Raise ValueError unless x is an int image (N, C, H, W) of levels in [0, K)."""
        if x.dim() != 4 or x.shape[1] != self.image_channels:
            raise ValueError(f"{type(self).__name__}: x must be (N, {self.image_channels}, H, W), "
                             f"got shape {tuple(x.shape)}")
        if x.is_floating_point() or x.is_complex():
            raise TypeError(f"{type(self).__name__}: x must hold integer levels, got dtype {x.dtype}")
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.num_classes):
            raise ValueError(f"{type(self).__name__}: x levels must be in [0, {self.num_classes}), got "
                             f"[{int(x.min())}, {int(x.max())}]")
        self.check_image_size(x.shape[2], x.shape[3])

    def check_image_size(self, height: int, width: int) -> None:
        """Raise ValueError if the model cannot handle (height, width) images."""
        if height < 1 or width < 1:
            raise ValueError(f"{type(self).__name__}: image size must be >= 1x1, got {height}x{width}")

    def check_condition(self, condition: torch.Tensor | None, batch: int) -> None:
        """Raise ValueError if `condition` is given to an unconditional model (subclasses override)."""
        if condition is not None:
            raise ValueError(f"{type(self).__name__} is unconditional: condition must be None")

    def noise_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
        """One uniform per (sample, channel, row, column)."""
        return (batch, self.image_channels, height, width)

    def draw(self, out: torch.Tensor, u: torch.Tensor, step: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None) -> tuple[slice, torch.Tensor]:
        """Sample colour group `step` at one pixel. out (N, C*K), u (N, C) -> (channels, values (N, 1))."""
        logits = out.reshape(out.shape[0], self.image_channels, self.num_classes)[:, step]
        v = sample_categorical(logits, u[:, step], temperature=temperature, top_k=top_k, top_p=top_p)
        return slice(step, step + 1), v[:, None]

    def logits(self, out_map: torch.Tensor) -> torch.Tensor:
        """(N, C*K, H, W) raw outputs -> (N, K, C, H, W) logits (class dim 1, ready for cross_entropy)."""
        n, _, h, w = out_map.shape
        return out_map.reshape(n, self.image_channels, self.num_classes, h, w).transpose(1, 2)

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """x int levels (N, C, H, W) -> logits (N, K, C, H, W)."""
        self.check_image(x)
        self.check_condition(condition, x.shape[0])
        return self.logits(self.output_map(self.prepare(x), condition))

    def log_prob(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x) in nats per image. x (N, C, H, W) int -> (N,); a one-channel model also takes (N, H, W)
        (e.g. a grid of codes)."""
        if x.dim() == 3 and self.image_channels == 1:
            x = x[:, None]
        nll = F.cross_entropy(self.forward(x, condition), x, reduction="none")
        return -nll.reshape(x.shape[0], -1).sum(1)

    def bits_per_dim(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """Negative log-likelihood in bits per sub-pixel. x (N, C, H, W) int (or (N, H, W), one channel) -> (N,)."""
        return -self.log_prob(x, condition) / (x[0].numel() * math.log(2.0))


def check_input_range(name: str, input_range: object) -> tuple[float, float]:
    """Validate an ``input_range`` argument: two finite floats lo < hi -> (lo, hi)."""
    ok = (isinstance(input_range, (tuple, list)) and len(input_range) == 2
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in input_range)
          and input_range[0] < input_range[1])
    if not ok:
        raise ValueError(f"{name}: input_range must be two finite numbers lo < hi, got {input_range!r}")
    return float(input_range[0]), float(input_range[1])


class PixelCNN(CategoricalImageModel):
    """PixelCNN with residual blocks.

    Args:
        image_channels: C (1 grey, 3 RGB); the colour groups are the C channels.
        num_classes: K levels per channel (256, or 2 for binary images).
        hidden_channels: h, divisible by C.
        num_blocks: residual blocks, each ReLU -> kxk mask-B conv -> ReLU -> 1x1 mask-B conv.
        kernel_size: k of the blocks (odd); input_kernel_size: of the mask-A input conv (odd).
        residual: False makes every block a plain ReLU -> kxk mask-B conv (no 1x1, no skip): the stack of
            masked convs of the original paper (what jzbontar/pixelcnn-pytorch trains).
        input_range: (lo, hi) the levels 0 and K-1 are mapped to (see :meth:`prepare`); (0, 1) is
            torchvision's ToTensor scaling.

    Shapes: forward(x (N, C, H, W) int in [0, K)) -> logits (N, K, C, H, W).
    """

    def __init__(self, image_channels: int = 1, num_classes: int = 256, hidden_channels: int = 64,
                 num_blocks: int = 4, kernel_size: int = 3, input_kernel_size: int = 7, *, residual: bool = True,
                 input_range: tuple[float, float] = (-1.0, 1.0), device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.input_range = check_input_range("PixelCNN", input_range)
        if image_channels < 1 or num_classes < 2:
            raise ValueError(f"PixelCNN: need image_channels >= 1 and num_classes >= 2, got {image_channels}, "
                             f"{num_classes}")
        if hidden_channels < 1 or hidden_channels % image_channels:
            raise ValueError(f"PixelCNN: hidden_channels ({hidden_channels}) must be a positive multiple of "
                             f"image_channels ({image_channels})")
        if num_blocks < 0:
            raise ValueError(f"PixelCNN: num_blocks must be >= 0, got {num_blocks}")
        self.image_channels, self.num_classes, self.residual = image_channels, num_classes, bool(residual)
        self.kwargs = {"image_channels": image_channels, "num_classes": num_classes, "hidden_channels": hidden_channels,
                       "num_blocks": num_blocks, "kernel_size": kernel_size, "input_kernel_size": input_kernel_size,
                       "residual": bool(residual), "input_range": list(self.input_range)}
        g, h = image_channels, hidden_channels
        kw = {"device": device, "dtype": dtype}
        conv = lambda cin, cout, k, mask: ann.MaskedConv2d(cin, cout, k, mask_type=mask, color_groups=g, **kw)
        layers: list[nn.Module] = [conv(image_channels, h, input_kernel_size, "A")]
        for _ in range(num_blocks):
            if residual:
                layers.append(Residual(nn.Sequential(nn.ReLU(), conv(h, h, kernel_size, "B"), nn.ReLU(),
                                                     conv(h, h, 1, "B"))))
            else:
                layers.append(nn.Sequential(nn.ReLU(), conv(h, h, kernel_size, "B")))
        layers += [nn.ReLU(), conv(h, h, 1, "B"), nn.ReLU(), conv(h, image_channels * num_classes, 1, "B")]
        self.net = nn.Sequential(*layers)

    def output_map(self, xf: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """(N, C, H, W) float (:meth:`prepare`) -> (N, C*K, H, W) logits, channel-major."""
        return self.net(xf)
