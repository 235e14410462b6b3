"""Gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders").

Two stacks without blind spot:
- vertical stack: ``ShiftedConv2d(shift='down')`` convs of kernel (k//2+1, k); row i sees image rows <= i;
  it reaches the horizontal stack only shifted down one row (so the horizontal stack at row i sees rows
  < i through it);
- horizontal stack: (1, k) ``MaskedConv2d`` convs (mask A first, then B, colour groups for RGB), a 1x1 link
  from the shifted vertical pre-activations added before the gate, gated tanh * sigmoid units, a 1x1
  mask-B conv and a residual connection (from the second layer on);
- optional class conditioning: a per-layer embedding of the label added to both stacks' pre-activations.

Cached decoding: the vertical stack is run once per row (when the row above is complete), the horizontal
stack once per pixel (per colour sub-step).
"""

from __future__ import annotations

import torch
from torch import nn

import arkern.nn as ann
from arkern.models.pixelcnn import CategoricalImageModel
from arkern.nn import DownShift, Gate


class GatedPixelCNN(CategoricalImageModel):
    """Gated PixelCNN.

    Args:
        image_channels: C (1 grey, 3 RGB); colour groups = C.
        num_classes: K levels per channel.
        hidden_channels: h (divisible by C); the gates see 2h pre-activations.
        num_layers: gated layers (>= 1); kernel_size: k (odd) of both stacks.
        num_labels: number of classes for conditioning (None = unconditional).

    Shapes: forward(x (N, C, H, W) int in [0, K), condition (N,) int in [0, num_labels)) -> (N, K, C, H, W).
    """

    def __init__(self, image_channels: int = 1, num_classes: int = 256, hidden_channels: int = 32,
                 num_layers: int = 5, kernel_size: int = 3, num_labels: int | None = None, *,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if image_channels < 1 or num_classes < 2:
            raise ValueError(f"GatedPixelCNN: need image_channels >= 1 and num_classes >= 2, got "
                             f"{image_channels}, {num_classes}")
        if hidden_channels < 1 or hidden_channels % image_channels:
            raise ValueError(f"GatedPixelCNN: hidden_channels ({hidden_channels}) must be a positive multiple "
                             f"of image_channels ({image_channels})")
        if num_layers < 1 or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"GatedPixelCNN: need num_layers >= 1 and an odd kernel_size, got {num_layers}, "
                             f"{kernel_size}")
        if num_labels is not None and num_labels < 1:
            raise ValueError(f"GatedPixelCNN: num_labels must be >= 1 or None, got {num_labels}")
        self.image_channels, self.num_classes, self.num_labels = image_channels, num_classes, num_labels
        g, h, k = image_channels, hidden_channels, kernel_size
        kw = {"device": device, "dtype": dtype}
        self.hidden_channels, self.num_layers = h, num_layers
        self.v_convs = nn.ModuleList()
        self.h_convs = nn.ModuleList()
        self.links = nn.ModuleList()
        self.h_outs = nn.ModuleList()
        for layer in range(num_layers):
            cin = image_channels if layer == 0 else h
            self.v_convs.append(ann.ShiftedConv2d(cin, 2 * h, (k // 2 + 1, k), shift="down", **kw))
            self.h_convs.append(ann.MaskedConv2d(cin, 2 * h, (1, k), mask_type="A" if layer == 0 else "B",
                                                 color_groups=g, **kw))
            self.links.append(nn.Conv2d(2 * h, 2 * h, 1, **kw))
            self.h_outs.append(ann.MaskedConv2d(h, h, 1, mask_type="B", color_groups=g, **kw))
        self.v_gate, self.h_gate, self.down = Gate(1), Gate(g), DownShift()
        self.head = nn.Sequential(nn.ReLU(), ann.MaskedConv2d(h, h, 1, mask_type="B", color_groups=g, **kw),
                                  nn.ReLU(), ann.MaskedConv2d(h, g * num_classes, 1, mask_type="B",
                                                              color_groups=g, **kw))
        self.embedding = nn.Embedding(num_labels, num_layers * 2 * h, **kw) if num_labels else None

    def check_condition(self, condition: torch.Tensor | None, batch: int) -> None:
        """condition: None (unconditional model) or int labels (batch,) in [0, num_labels)."""
        if self.embedding is None:
            super().check_condition(condition, batch)
            return
        if condition is None:
            raise ValueError(f"GatedPixelCNN: this model is class-conditional; pass condition (N,) labels in "
                             f"[0, {self.num_labels})")
        if condition.shape != (batch,) or condition.is_floating_point():
            raise ValueError(f"GatedPixelCNN: condition must be int labels of shape ({batch},), got "
                             f"{condition.dtype} {tuple(condition.shape)}")
        if int(condition.min()) < 0 or int(condition.max()) >= self.num_labels:
            raise ValueError(f"GatedPixelCNN: condition labels must be in [0, {self.num_labels}), got "
                             f"[{int(condition.min())}, {int(condition.max())}]")

    def layer_bias(self, condition: torch.Tensor | None) -> list[torch.Tensor | None]:
        """Per-layer conditioning added to the 2h pre-activations: (N, 2h) each, or None."""
        if self.embedding is None:
            return [None] * self.num_layers
        e = self.embedding(condition)
        return list(e.split(2 * self.hidden_channels, dim=1))

    def output_map(self, xf: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """(N, C, H, W) float in [-1, 1] -> (N, C*K, H, W) logits, channel-major."""
        v = hs = xf
        for layer, cond in enumerate(self.layer_bias(condition)):
            v_pre = self.v_convs[layer](v)
            if cond is not None:
                v_pre = v_pre + cond[:, :, None, None]
            h_pre = self.h_convs[layer](hs) + self.links[layer](self.down(v_pre))
            if cond is not None:
                h_pre = h_pre + cond[:, :, None, None]
            v = self.v_gate(v_pre)
            h_out = self.h_outs[layer](self.h_gate(h_pre))
            hs = h_out if layer == 0 else hs + h_out
        return self.head(hs)
