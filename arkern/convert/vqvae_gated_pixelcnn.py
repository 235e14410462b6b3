"""Source "vqvae-gated-pixelcnn": the Gated PixelCNN prior of ritheshkumar95/pytorch-vqvae (modules.py,
``GatedPixelCNN``), a class-conditional model of the VQ-VAE's grids of K discrete codes.

Upstream's network: an ``nn.Embedding(input_dim, dim)`` of the codes; ``n_layers`` GatedMaskedConv2d layers
(the first 7x7 with mask A and no residual, the others 3x3 mask B with a residual), each with a
class-conditional ``nn.Embedding(n_classes, 2*dim)`` added before both gates, a vertical stack conv of
kernel (k//2+1, k) padded (k//2, k//2) and cropped to the first H rows, a horizontal stack conv (1, k//2+1)
padded (0, k//2) and cropped to the first W columns, mask A zeroing the vertical kernel's last row and the
horizontal kernel's last column, ``vert_to_horiz`` (1x1, 2*dim -> 2*dim) applied to the vertical
pre-activations *before* the class embedding is added, tanh * sigmoid gates, ``horiz_resid`` (1x1);
then ``output_conv``: 1x1 dim -> 512, ReLU, 1x1 512 -> K. Its loss is the cross-entropy of the logits
against the codes.

The converted model is an arkern :class:`~arkern.models.GatedPixelCNN` with ``input_embedding=dim``,
``input_kernel_size=7``, ``kernel_size=3``, ``vertical_shift="input"``, ``head_channels=512`` and
``head_relu=False``. The mapping is exact (up to float32 summation order): upstream's vertical stack at row
i sees rows < i through its mask-A first layer, which is arkern's vertical stack reading the codes shifted
down one row with that layer's kernel cut to its k//2 unmasked rows; the horizontal kernels sit in the left
half of arkern's centred (1, k) masked convs; the per-layer class embeddings are the slices of arkern's one
label embedding.

The model is a prior over code grids: its "images" have one channel of K levels, and its meta says
``"kind": "codes"`` (kept by :func:`arkern.save`), so ``arkern.generate`` returns code grids (B, H, W) as
upstream's ``GatedPixelCNN.generate`` does (the lower-level :func:`arkern.sampling.sample_image` keeps the
image models' (B, 1, H, W)); ``log_prob`` takes (B, H, W) codes or (B, 1, H, W). Sampling needs the class
labels (``condition=``), as upstream's ``generate(label, ...)`` does.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from arkern.convert.checkpoint import StateReader, image_shape
from arkern.models.gated_pixelcnn import GatedPixelCNN

SOURCE = "vqvae-gated-pixelcnn"
FIRST_KERNEL, KERNEL, HEAD = 7, 3, 512  # hard-coded in upstream's GatedPixelCNN


def convert(state: Mapping[str, torch.Tensor], *, input_dim: int = 256, dim: int = 64, n_layers: int = 15,
            n_classes: int = 10, shape: tuple[int, int] | list[int] = (8, 8)) -> GatedPixelCNN:
    """Upstream's state dict -> :class:`arkern.models.GatedPixelCNN` (float32, eval mode).

    Args:
        state: ``GatedPixelCNN.state_dict()`` (keys ``embedding.weight``, ``layers.{i}.vert_stack.weight``,
            ..., ``output_conv.2.bias``), ``module.`` already stripped.
        input_dim: K, the number of codes (pixelcnn_prior.py passes the VQ-VAE's ``--k``, 512 by default).
        dim: the embedding and hidden width (``--hidden-size-prior``, 64 by default).
        n_layers: gated layers (``--num-layers``, 15 by default).
        n_classes: class labels of the conditioning (10 for MNIST / CIFAR-10).
        shape: the code grid size (H, W), kept as the model's default sampling size (``model.meta["shape"]``);
            upstream's ``generate`` defaults to 8x8 (CIFAR-10 through its VQ-VAE; MNIST gives 7x7).

    Raises:
        ValueError: a config upstream cannot have, or a checkpoint that does not match it (the key, the
            expected and the found shape).
    """
    if input_dim < 2 or dim < 1 or n_layers < 1 or n_classes < 1:
        raise ValueError(f"arkern.convert({SOURCE!r}): need input_dim >= 2, dim >= 1, n_layers >= 1 and "
                         f"n_classes >= 1, got {input_dim}, {dim}, {n_layers}, {n_classes}")
    meta = {"kind": "codes", "shape": image_shape(SOURCE, shape)}
    reader = StateReader(state, SOURCE)
    model = GatedPixelCNN(image_channels=1, num_classes=input_dim, hidden_channels=dim, num_layers=n_layers,
                          kernel_size=KERNEL, num_labels=n_classes, input_kernel_size=FIRST_KERNEL,
                          input_embedding=dim, vertical_shift="input", head_channels=HEAD, head_relu=False)
    model.input_embedding.weight.copy_(reader.take("embedding.weight", (input_dim, dim)))
    d2 = 2 * dim
    for layer in range(n_layers):
        key, k = f"layers.{layer}", FIRST_KERNEL if layer == 0 else KERNEL
        model.embedding.weight[:, layer * d2:(layer + 1) * d2] = reader.take(
            f"{key}.class_cond_embedding.weight", (n_classes, d2))
        vert = reader.take(f"{key}.vert_stack.weight", (d2, dim, k // 2 + 1, k))
        # mask A (make_causal) zeroes the last row of the first layer's vertical kernel: arkern's first
        # vertical conv reads the codes shifted down one row with the other k//2 rows
        model.v_convs[layer].weight.copy_(vert[:, :, :k // 2] if layer == 0 else vert)
        model.v_convs[layer].bias.copy_(reader.take(f"{key}.vert_stack.bias", (d2,)))
        horiz = reader.take(f"{key}.horiz_stack.weight", (d2, dim, 1, k // 2 + 1))
        h_conv = model.h_convs[layer]
        h_conv.weight.zero_()
        h_conv.weight[..., :k // 2 + 1] = horiz  # the right half is masked; mask A also drops the centre
        h_conv.bias.copy_(reader.take(f"{key}.horiz_stack.bias", (d2,)))
        model.links[layer].weight.copy_(reader.take(f"{key}.vert_to_horiz.weight", (d2, d2, 1, 1)))
        model.links[layer].bias.copy_(reader.take(f"{key}.vert_to_horiz.bias", (d2,)))
        model.h_outs[layer].weight.copy_(reader.take(f"{key}.horiz_resid.weight", (dim, dim, 1, 1)))
        model.h_outs[layer].bias.copy_(reader.take(f"{key}.horiz_resid.bias", (dim,)))
    first, last = model.head[0], model.head[2]
    first.weight.copy_(reader.take("output_conv.0.weight", (HEAD, dim, 1, 1)))
    first.bias.copy_(reader.take("output_conv.0.bias", (HEAD,)))
    last.weight.copy_(reader.take("output_conv.2.weight", (input_dim, HEAD, 1, 1)))
    last.bias.copy_(reader.take("output_conv.2.bias", (input_dim,)))
    reader.finish()
    model.meta = meta
    return model
