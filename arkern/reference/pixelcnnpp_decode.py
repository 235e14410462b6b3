"""Reference of the fused PixelCNN++ sampler (``torch.ops.arkern.pixelcnnpp_generate``), in plain PyTorch.

The op's packed weights (:class:`arkern.ops.pixelcnnpp_decode.PixelCNNppFused`) are unpacked back into
convolution weights (:func:`unpack`), the network is written out as functions of them (:func:`network`, the
PixelCNN++ of Salimans et al. 2017: a ``u`` stream that sees the rows above and a ``ul`` stream that also
sees the pixels to the left, gated resnets with concat_elu, two stride-2 down-samplings and up-samplings with
skip connections, a discretized logistic mixture per pixel), and :func:`pixelcnnpp_generate` samples it the
naive way: one full forward per pixel in raster order, keeping output (i, j), then the mixture draw of
:func:`arkern.distributions.sample_discretized_logistic_mixture` at that pixel's uniforms.

Packed order (the kernel's): ``u_init``, ``ul_init_down``, ``ul_init_right``; the up pass's gated resnets,
``u`` stream then ``ul`` stream, scale 0, 1, 2 (scale s has resolution (H, W) / 2**s); the stride-2
down-samplings of ``u`` then ``ul``; the down pass's resnets by scale 0, 1, 2 (R + 1, R + 1, R of them),
``u`` then ``ul``; for the up-samplings into scale 0 then 1, each transposed conv as one (Cout x Cin) matrix
per kernel tap and then its bias alone; the output 1x1 conv. A resnet is its ``conv_in``, its 1x1 ``nin`` on
the auxiliary input (all but the up pass's ``u`` stream) and its ``conv_out``. Convs are (Cout x kH*kW*Cin)
matrices, columns ordered (kernel row, kernel column, input channel), tiled as
:func:`arkern.reference.pixelcnn_decode.untile_matrix` reads them.

bfloat16 packs (every matrix bfloat16) select the bfloat16 precision (docs/design.md): the input of every
matrix product — every conv's, nin's, transposed conv's and the output conv's — is rounded to bfloat16 (to
nearest even) just before the product (:func:`_matrix_input`), the bfloat16 weights are widened to float32 and
the products summed in float32; biases, elu, sigmoid, residual sums, mixture parameters and the draw stay
float32 / float64.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F

from arkern.distributions import mixture_params_size, quantize, sample_discretized_logistic_mixture
from arkern.reference.pixelcnn_decode import untile_matrix
from arkern.reference.shifted_conv2d import shifted_conv2d, shifted_conv_transpose2d


class PixelCNNppLayout(NamedTuple):
    """The architecture the fused PixelCNN++ kernel runs (the op's ``config`` ints, in this order)."""

    channels: int  # image channels C (1 or 3)
    mixtures: int  # logistic mixture components M
    bins: int  # levels per channel
    filters: int  # feature channels f of both streams
    resnets: int  # gated resnet blocks per scale in the up pass (the down pass has one more at scales 0, 1)


class Conv(NamedTuple):
    weight: torch.Tensor  # (Cout, Cin, kH, kW), or (Cin, Cout, kH, kW) for a transposed conv
    bias: torch.Tensor
    shift: str  # "down" or "downright"


class Resnet(NamedTuple):
    conv_in: Conv
    nin: tuple[torch.Tensor, torch.Tensor] | None  # 1x1 conv on the auxiliary input: (weight (f, Ca), bias)
    conv_out: Conv


def unpack(config: list[int], weights: list[torch.Tensor], biases: list[torch.Tensor]) -> dict:
    """The packed tensors -> every layer's weights, named and ordered as the model's forward uses them."""
    lay = PixelCNNppLayout(*config)
    f, r = lay.filters, lay.resnets
    items: Iterator[tuple[torch.Tensor, torch.Tensor]] = iter(zip(weights, biases))

    def take(m: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        w, b = next(items)
        return (untile_matrix(w, m, n).float() if n else w.new_zeros(m, 0)), b[:m].float()

    def conv(cin: int, cout: int, kh: int, kw: int, shift: str) -> Conv:
        w, b = take(cout, kh * kw * cin)
        return Conv(w.reshape(cout, kh, kw, cin).permute(0, 3, 1, 2).contiguous(), b, shift)

    def resnet(shift: str, aux: int) -> Resnet:
        kw = 3 if shift == "down" else 2
        conv_in = conv(2 * f, f, 2, kw, shift)
        nin = take(f, 2 * aux * f) if aux else None
        return Resnet(conv_in, nin, conv(2 * f, 2 * f, 2, kw, shift))

    def transpose(kh: int, kw: int, shift: str) -> Conv:
        weight = torch.zeros(f, f, kh, kw)
        for a in range(kh):
            for c in range(kw):
                weight[:, :, a, c] = take(f, f)[0].t()  # the tap's (Cout x Cin) matrix
        return Conv(weight, take(f, 0)[1], shift)

    cin = lay.channels + 1  # the image and a channel of ones
    net = {"u_init": conv(cin, f, 2, 3, "down"), "ul_init_down": conv(cin, f, 1, 3, "down"),
           "ul_init_right": conv(cin, f, 2, 1, "downright")}
    net["up_u"] = [[resnet("down", 0) for _ in range(r)] for _ in range(3)]
    net["up_ul"] = [[resnet("downright", 1) for _ in range(r)] for _ in range(3)]
    net["down_u"] = [conv(f, f, 2, 3, "down") for _ in range(2)]
    net["down_ul"] = [conv(f, f, 2, 2, "downright") for _ in range(2)]
    counts = [r + 1, r + 1, r]  # down-pass resnets at scales 0, 1, 2
    dn_u = [[resnet("down", 1) for _ in range(counts[s])] for s in range(3)]
    dn_ul = [[resnet("downright", 2) for _ in range(counts[s])] for s in range(3)]
    up_u, up_ul = [], []
    for _ in range(2):  # into scale 0, then scale 1
        up_u.append(transpose(2, 3, "down"))
        up_ul.append(transpose(2, 2, "downright"))
    # the down pass runs from the coarsest scale: stage k works at scale 2 - k, then up-samples into 1 - k
    net["dn_u"], net["dn_ul"] = dn_u[::-1], dn_ul[::-1]
    net["up_sample_u"], net["up_sample_ul"] = up_u[::-1], up_ul[::-1]
    w_out, b_out = take(mixture_params_size(lay.channels, lay.mixtures), f)
    net["out"] = (w_out, b_out)
    net["bf16"] = weights[0].dtype == torch.bfloat16  # the bfloat16 precision: round every matrix input
    if next(items, None) is not None:
        raise ValueError("pixelcnnpp_generate: more packed weights than the config describes")
    return net


def _concat_elu(x: torch.Tensor) -> torch.Tensor:
    return F.elu(torch.cat([x, -x], dim=1))


def _matrix_input(net: dict, x: torch.Tensor) -> torch.Tensor:
    """x as a matrix product reads it: rounded to bfloat16 (and back to float32) in the bfloat16 precision."""
    return x.to(torch.bfloat16).float() if net["bf16"] else x


def _conv(net: dict, layer: Conv, x: torch.Tensor, stride: int = 1) -> torch.Tensor:
    return shifted_conv2d(_matrix_input(net, x), layer.weight, layer.bias, layer.shift, stride)


def _resnet(net: dict, block: Resnet, x: torch.Tensor, aux: torch.Tensor | None = None) -> torch.Tensor:
    """x + a * sigmoid(b), [a, b] = conv_out(concat_elu(conv_in(concat_elu(x)) + nin(concat_elu(aux))))."""
    c = _conv(net, block.conv_in, _concat_elu(x))
    if block.nin is not None:
        w, b = block.nin
        c = c + F.conv2d(_matrix_input(net, _concat_elu(aux)), w[:, :, None, None], b)
    a, g = _conv(net, block.conv_out, _concat_elu(c)).chunk(2, dim=1)
    return x + a * torch.sigmoid(g)


def network(net: dict, xf: torch.Tensor) -> torch.Tensor:
    """The PixelCNN++ forward: xf (N, C, H, W) values in [-1, 1] -> (N, P, H, W) mixture parameters."""
    x = torch.cat([xf, torch.ones_like(xf[:, :1])], dim=1)
    down_shift = lambda t: F.pad(t, (0, 0, 1, 0))[..., :-1, :]
    right_shift = lambda t: F.pad(t, (1, 0))[..., :-1]
    u = down_shift(_conv(net, net["u_init"], x))
    ul = down_shift(_conv(net, net["ul_init_down"], x)) + right_shift(_conv(net, net["ul_init_right"], x))
    us, uls = [u], [ul]
    for scale in range(3):  # up pass, fine to coarse
        for block_u, block_ul in zip(net["up_u"][scale], net["up_ul"][scale]):
            u = _resnet(net, block_u, u)
            ul = _resnet(net, block_ul, ul, u)
            us.append(u)
            uls.append(ul)
        if scale < 2:
            u, ul = _conv(net, net["down_u"][scale], u, 2), _conv(net, net["down_ul"][scale], ul, 2)
            us.append(u)
            uls.append(ul)
    u, ul = us.pop(), uls.pop()
    for stage in range(3):  # down pass, coarse to fine, consuming the up pass's outputs
        for block_u, block_ul in zip(net["dn_u"][stage], net["dn_ul"][stage]):
            u = _resnet(net, block_u, u, us.pop())
            ul = _resnet(net, block_ul, ul, torch.cat([u, uls.pop()], dim=1))
        if stage < 2:
            up_u, up_ul = net["up_sample_u"][stage], net["up_sample_ul"][stage]
            u = shifted_conv_transpose2d(_matrix_input(net, u), up_u.weight, up_u.bias, up_u.shift)
            ul = shifted_conv_transpose2d(_matrix_input(net, ul), up_ul.weight, up_ul.bias, up_ul.shift)
    w_out, b_out = net["out"]
    return F.conv2d(_matrix_input(net, F.elu(ul)), w_out[:, :, None, None], b_out)


@torch.no_grad()
def pixelcnnpp_generate(config: list[int], weights: list[torch.Tensor], biases: list[torch.Tensor],
                        image: torch.Tensor, noise: torch.Tensor, temperature: float, return_params: bool,
                        forced: torch.Tensor | None) -> torch.Tensor:
    """The op in plain PyTorch: naive raster sampling of the unpacked network.

    Same arguments and results as ``torch.ops.arkern.pixelcnnpp_generate``: image (N, C, H, W) int64 receives
    the levels (mutated); noise (N, 1 + C, H, W) float64; forced levels replace the drawn ones. Returns the
    (N, H, W, P) float32 mixture parameters of every pixel, or an empty tensor.
    """
    lay = PixelCNNppLayout(*config)
    net = unpack(config, weights, biases)
    n, c, h, w = image.shape
    xf = torch.zeros(n, c, h, w, dtype=torch.float32)
    params = torch.zeros(n, h, w, mixture_params_size(c, lay.mixtures), dtype=torch.float32)
    for i in range(h):
        for j in range(w):
            out = network(net, xf)[:, :, i, j]  # depends only on the pixels before (i, j)
            params[:, i, j] = out
            if forced is not None:
                levels = forced[:, :, i, j]
            else:
                values = sample_discretized_logistic_mixture(out, noise[:, :, i, j], channels=c,
                                                             num_mixtures=lay.mixtures, bins=lay.bins,
                                                             temperature=temperature)
                levels = quantize(values, lay.bins)
            image[:, :, i, j] = levels
            xf[:, :, i, j] = levels.to(torch.float32) * (2.0 / (lay.bins - 1)) - 1.0
    return params if return_params else params.new_empty(0)
