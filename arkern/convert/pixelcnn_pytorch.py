"""Source "pixelcnn-pytorch": the PixelCNN of jzbontar/pixelcnn-pytorch (its main.py), as an arkern PixelCNN.

Upstream's network is an ``nn.Sequential`` of ``num_layers`` masked k x k convs without bias (mask A on
the image, then mask B; each holds its mask as a ``mask`` buffer), each followed by BatchNorm2d and ReLU,
then a 1x1 conv to ``num_classes`` logits. Its script hard-codes fm=64, 8 masked 7x7 layers, one channel
(MNIST) and 256 levels; the input is the image in [0, 1] (torchvision's ToTensor: level / 255), zero padded,
and the loss is the cross-entropy of the logits against the levels.

The converted model is ``PixelCNN(residual=False, input_range=(0, 1))``: the first conv and every block's
conv carry the folded BatchNorm (eval mode: running statistics), the blocks are ReLU -> conv, and the head
ReLU -> 1x1 -> ReLU -> 1x1 gets an identity 1x1 in the middle (ReLU(ReLU(x)) = ReLU(x), and x*1 plus zeros is
exact), so ``log_prob`` is upstream's summed cross-entropy and every arkern sampler (naive, cached, fused)
runs it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from arkern.convert.checkpoint import StateReader, fold_batchnorm, image_shape
from arkern.masks import pixelcnn_mask
from arkern.models.pixelcnn import PixelCNN

SOURCE = "pixelcnn-pytorch"


def convert(state: Mapping[str, torch.Tensor], *, fm: int = 64, num_layers: int = 8, kernel_size: int = 7,
            input_channels: int = 1, num_classes: int = 256, bn_eps: float = 1e-5,
            shape: tuple[int, int] | list[int] = (28, 28)) -> PixelCNN:
    """Upstream's state dict -> :class:`arkern.models.PixelCNN` (float32, eval mode).

    Args:
        state: the ``nn.Sequential``'s state dict (keys ``0.weight``, ``0.mask``, ``1.running_mean``, ...,
            ``{3*num_layers}.weight`` / ``.bias``), ``module.`` already stripped.
        fm: feature maps of every masked conv (upstream: 64).
        num_layers: masked convs, the mask-A one included (upstream: 8).
        kernel_size: k of the masked convs (upstream: 7, odd).
        input_channels: 1; upstream's masks have no colour groups and its loss scores channel 0 only, so
            a multi-channel checkpoint has no likelihood over whole images to reproduce.
        num_classes: levels K = logits of the last conv (upstream: 256); the input is level / (K - 1).
        bn_eps: the BatchNorm2d eps (torch's default 1e-5).
        shape: the image size (H, W) it was trained on (upstream: 28x28 MNIST), kept as the model's default
            sampling size (``model.meta["shape"]``: ``arkern sample DIR`` needs no ``--shape``).

    Raises:
        ValueError: a config upstream cannot have, or a checkpoint that does not match it (the key, the
            expected and the found shape), or a mask buffer that is not the mask A / B of its layer.
    """
    if input_channels != 1:
        raise ValueError(f"arkern.convert({SOURCE!r}): input_channels must be 1 (upstream's masks have no colour "
                         f"groups and its loss scores channel 0 only), got {input_channels}")
    if fm < 1 or num_layers < 1 or kernel_size < 1 or kernel_size % 2 == 0 or num_classes < 2:
        raise ValueError(f"arkern.convert({SOURCE!r}): need fm >= 1, num_layers >= 1, an odd kernel_size and "
                         f"num_classes >= 2, got fm={fm}, num_layers={num_layers}, kernel_size={kernel_size}, "
                         f"num_classes={num_classes}")
    meta = {"shape": image_shape(SOURCE, shape)}
    reader = StateReader(state, SOURCE)
    model = PixelCNN(image_channels=1, num_classes=num_classes, hidden_channels=fm, num_blocks=num_layers - 1,
                     kernel_size=kernel_size, input_kernel_size=kernel_size, residual=False, input_range=(0.0, 1.0))
    convs = [model.net[0]] + [model.net[b][1] for b in range(1, num_layers)]
    for n, conv in enumerate(convs):
        key, cin = str(3 * n), 1 if n == 0 else fm
        w_shape = (fm, cin, kernel_size, kernel_size)
        weight = reader.take(f"{key}.weight", w_shape)
        mask = reader.take(f"{key}.mask", w_shape)
        expected = pixelcnn_mask(fm, cin, (kernel_size, kernel_size), "A" if n == 0 else "B", 1)
        if not torch.equal(mask != 0, expected.to(torch.bool)):
            raise ValueError(f"arkern.convert({SOURCE!r}): key {key + '.mask'!r} is not the mask "
                             f"{'A' if n == 0 else 'B'} of a {kernel_size}x{kernel_size} conv (layer {n})")
        bias = reader.take_optional(f"{key}.bias", (fm,))
        bn = str(3 * n + 1)
        w, b = fold_batchnorm(weight * mask, bias, reader.take(f"{bn}.running_mean", (fm,)),
                              reader.take(f"{bn}.running_var", (fm,)), reader.take_optional(f"{bn}.weight", (fm,)),
                              reader.take_optional(f"{bn}.bias", (fm,)), bn_eps)
        reader.skip([f"{bn}.num_batches_tracked"])
        conv.weight.copy_(w)
        conv.bias.copy_(b)
    identity, out = model.net[-3], model.net[-1]
    identity.weight.copy_(torch.eye(fm).reshape(fm, fm, 1, 1))
    identity.bias.zero_()
    last = str(3 * num_layers)
    out.weight.copy_(reader.take(f"{last}.weight", (num_classes, fm, 1, 1)))
    out.bias.copy_(reader.take(f"{last}.bias", (num_classes,)))
    reader.finish()
    model.meta = meta
    return model
