"""Gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders").

Two stacks without blind spot:
- vertical stack: ``ShiftedConv2d(shift='down')`` convs of kernel (k//2+1, k); row i sees image rows <= i;
  it reaches the horizontal stack only shifted down one row (so the horizontal stack at row i sees rows
  < i through it);
- horizontal stack: (1, k) ``MaskedConv2d`` convs (mask A first, then B, colour groups for RGB), a 1x1 link
  from the shifted vertical pre-activations added before the gate, gated tanh * sigmoid units, a 1x1
  mask-B conv and a residual connection (from the second layer on);
- optional class conditioning: a per-layer embedding of the label added to both stacks' pre-activations.

Options for models trained elsewhere (the Gated PixelCNN prior of ritheshkumar95/pytorch-vqvae, see
:mod:`arkern.convert.vqvae_gated_pixelcnn`): a learned embedding of the K levels as the input, a first
layer with its own kernel size, the one-row shift on the vertical stack's input instead of on the link
(``vertical_shift="input"``), and the head's width and leading ReLU.

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
        input_kernel_size: k of the first layer (odd; default kernel_size).
        input_embedding: E: the input is a learned embedding (K -> E values) of the level instead of the
            scaled level (one image channel only: codes of a discrete latent grid, say).
        vertical_shift: where the one-row shift between the stacks sits. "link" (default): the horizontal
            stack at row i gets the 1x1 link of the vertical pre-activations (class bias included) of row
            i - 1. "input": the vertical stack reads the image shifted down one row (its first conv then has
            kernel (k//2, k): the k//2 rows above), and the link takes the same row's pre-activations
            before the class bias (van den Oord et al.'s formulation).
        head_channels: width of the head's inner 1x1 conv (default hidden_channels).
        head_relu: whether the head starts with a ReLU (default True).

    Shapes: forward(x (N, C, H, W) int in [0, K), condition (N,) int in [0, num_labels)) -> (N, K, C, H, W).
    """

    def __init__(self, image_channels: int = 1, num_classes: int = 256, hidden_channels: int = 32,
                 num_layers: int = 5, kernel_size: int = 3, num_labels: int | None = None, *,
                 input_kernel_size: int | None = None, input_embedding: int | None = None,
                 vertical_shift: str = "link", head_channels: int | None = None, head_relu: bool = True,
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
        k0 = kernel_size if input_kernel_size is None else input_kernel_size
        if vertical_shift not in ("link", "input"):
            raise ValueError(f"GatedPixelCNN: vertical_shift must be 'link' or 'input', got {vertical_shift!r}")
        if k0 < (3 if vertical_shift == "input" else 1) or k0 % 2 == 0:
            raise ValueError(f"GatedPixelCNN: input_kernel_size must be odd (>= 3 with vertical_shift='input'), "
                             f"got {k0}")
        if input_embedding is not None and (input_embedding < 1 or image_channels != 1):
            raise ValueError(f"GatedPixelCNN: input_embedding needs image_channels == 1 and a width >= 1, got "
                             f"{input_embedding} with {image_channels} channels")
        hh = hidden_channels if head_channels is None else head_channels
        if hh < 1 or hh % image_channels:
            raise ValueError(f"GatedPixelCNN: head_channels ({hh}) must be a positive multiple of image_channels "
                             f"({image_channels})")
        self.image_channels, self.num_classes, self.num_labels = image_channels, num_classes, num_labels
        self.kwargs = {"image_channels": image_channels, "num_classes": num_classes, "hidden_channels": hidden_channels,
                       "num_layers": num_layers, "kernel_size": kernel_size, "num_labels": num_labels,
                       "input_kernel_size": k0, "input_embedding": input_embedding, "vertical_shift": vertical_shift,
                       "head_channels": hh, "head_relu": bool(head_relu)}
        g, h, k = image_channels, hidden_channels, kernel_size
        kw = {"device": device, "dtype": dtype}
        self.hidden_channels, self.num_layers, self.vertical_shift = h, num_layers, vertical_shift
        self.input_embedding = nn.Embedding(num_classes, input_embedding, **kw) if input_embedding else None
        self.v_convs = nn.ModuleList()
        self.h_convs = nn.ModuleList()
        self.links = nn.ModuleList()
        self.h_outs = nn.ModuleList()
        for layer in range(num_layers):
            cin = (input_embedding or image_channels) if layer == 0 else h
            kl = k0 if layer == 0 else k
            rows = kl // 2 if layer == 0 and vertical_shift == "input" else kl // 2 + 1
            self.v_convs.append(ann.ShiftedConv2d(cin, 2 * h, (rows, kl), shift="down", **kw))
            self.h_convs.append(ann.MaskedConv2d(cin, 2 * h, (1, kl), mask_type="A" if layer == 0 else "B",
                                                 color_groups=g, **kw))
            self.links.append(nn.Conv2d(2 * h, 2 * h, 1, **kw))
            self.h_outs.append(ann.MaskedConv2d(h, h, 1, mask_type="B", color_groups=g, **kw))
        self.v_gate, self.h_gate, self.down = Gate(1), Gate(g), DownShift()
        head = [ann.MaskedConv2d(h, hh, 1, mask_type="B", color_groups=g, **kw), nn.ReLU(),
                ann.MaskedConv2d(hh, g * num_classes, 1, mask_type="B", color_groups=g, **kw)]
        self.head = nn.Sequential(*([nn.ReLU()] if head_relu else []), *head)
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

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Integer levels (N, C, H, W) -> the float input: scaled levels, or the levels themselves (as
        floats, exact below 2**24) for a model with an input embedding, which :meth:`embed` looks up."""
        if self.input_embedding is None:
            return super().prepare(x)
        return x.to(self.input_embedding.weight.dtype)

    def embed(self, xf: torch.Tensor) -> torch.Tensor:
        """The first layer's input: (N, C, ...) from :meth:`prepare` -> (N, E, ...) embedded (or xf itself)."""
        if self.input_embedding is None:
            return xf
        return self.input_embedding(xf[:, 0].long()).movedim(-1, 1)

    def output_map(self, xf: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """(N, C, H, W) float (:meth:`prepare`) -> (N, C*K, H, W) logits, channel-major."""
        v = hs = self.embed(xf)
        shift_input = self.vertical_shift == "input"
        if shift_input:
            v = self.down(v)
        for layer, cond in enumerate(self.layer_bias(condition)):
            v_pre = self.v_convs[layer](v)
            link = self.links[layer](v_pre) if shift_input else None
            if cond is not None:
                v_pre = v_pre + cond[:, :, None, None]
            if link is None:
                link = self.links[layer](self.down(v_pre))
            h_pre = self.h_convs[layer](hs) + link
            if cond is not None:
                h_pre = h_pre + cond[:, :, None, None]
            v = self.v_gate(v_pre)
            h_out = self.h_outs[layer](self.h_gate(h_pre))
            hs = h_out if layer == 0 else hs + h_out
        return self.head(hs)
