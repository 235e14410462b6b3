"""Every draw arkern makes, from pre-drawn uniforms (so every sampler can share the noise).

Every draw here is a deterministic function of (parameters, uniforms): given the same network outputs
and the same noise, the naive, cached and fused samplers pick the same values. Uniforms are in [0, 1).

- :func:`sample_categorical`: K-way softmax by inverse CDF, with temperature / top-k / top-p (the draw of
  WaveNet and the PixelCNN family; the fused kernels make the same float64 decisions), and
  :func:`check_warpers`, the one check of temperature / top_k / top_p;
- :func:`draw_uniforms`: the noise itself (float64 uniforms from a generator or a seed);
- :func:`sample_bernoulli`: binary pixels from one logit.
- :func:`sample_discretized_logistic_mixture` and :func:`discretized_logistic_mixture_log_prob`:
  the PixelCNN++ output (Salimans et al. 2017), for images scaled to [-1, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["sample_categorical", "check_warpers", "draw_uniforms", "sample_bernoulli",
           "sample_discretized_logistic_mixture", "discretized_logistic_mixture_log_prob",
           "mixture_params_size", "quantize", "dequantize", "bits_per_dim"]

_TINY = 1e-12


MIN_TEMPERATURE = 1e-6  # below, logits / temperature overflow float32 (top_k=1 samples greedily)


def check_warpers(temperature: float, top_k: int | None, top_p: float | None, who: str) -> None:
    """Sampling warpers: temperature finite and >= 1e-6, top_k an int >= 1 or None, top_p in (0, 1] or None.

    An infinite temperature or a denormal one (5e-324) would turn the scaled logits into NaN or inf, where
    the float32 fused kernels and the float64 Python samplers would draw differently.
    """
    if (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
            or not MIN_TEMPERATURE <= temperature < math.inf):
        raise ValueError(f"{who}: temperature must be a finite number >= {MIN_TEMPERATURE:g} (top_k=1 samples "
                         f"greedily), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"{who}: top_k must be an int >= 1 or None, got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                              or not 0 < top_p <= 1):
        raise ValueError(f"{who}: top_p must be in (0, 1] or None, got {top_p!r}")


def sample_categorical(logits: torch.Tensor, u: torch.Tensor, *, temperature: float = 1.0,
                       top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Draw one class per row of `logits` by inverse CDF at the uniforms `u`.

    Shapes: logits (..., K), u (...) in [0, 1) -> (...) int64 in [0, K).

    In float64: z = logits / temperature; top_k keeps z >= the k-th largest; e = exp(z - max z); top_p
    keeps, in order of decreasing e (ties: lower class first), the classes whose preceding probability
    mass is < top_p (the smallest set reaching top_p); then the first class whose running sum of kept e
    exceeds u * (sum of kept e). top_k >= K and top_p == 1 change nothing.
    """
    check_warpers(temperature, top_k, top_p, "sample_categorical")
    if logits.dim() < 1:
        raise ValueError("sample_categorical: logits must have a class dimension (..., K)")
    if tuple(u.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"sample_categorical: u must have shape {tuple(logits.shape[:-1])} (logits without the "
                         f"class dimension), got {tuple(u.shape)}")
    k = logits.shape[-1]
    z = logits.to(torch.float64) / temperature
    if top_k is not None and top_k < k:
        kth = torch.topk(z, top_k, dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, -torch.inf)
    e = torch.exp(z - z.amax(-1, keepdim=True))
    if top_p is not None and top_p < 1:
        total = torch.cumsum(e, -1)[..., -1:]  # a sequential sum, as in the C++ kernels
        p_sorted, order = torch.sort(e / total, dim=-1, descending=True, stable=True)
        before = torch.cumsum(p_sorted, -1)
        before = torch.cat([torch.zeros_like(before[..., :1]), before[..., :-1]], -1)
        drop = torch.zeros_like(before, dtype=torch.bool).scatter(-1, order, before >= top_p)
        e = e.masked_fill(drop, 0.0)
    cdf = torch.cumsum(e, -1)
    target = (u.to(torch.float64).unsqueeze(-1) * cdf[..., -1:]).contiguous()
    idx = torch.searchsorted(cdf.contiguous(), target, right=True).squeeze(-1)
    last_kept = (k - 1) - torch.argmax((e.flip(-1) > 0).to(torch.int8), dim=-1)
    return torch.where(idx >= k, last_kept, idx)


def draw_uniforms(shape: tuple[int, ...], *, generator: torch.Generator | None = None, seed: int | None = None,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """float64 uniforms in [0, 1) of `shape`, from `generator`, or a fresh generator seeded with `seed`."""
    if generator is not None and seed is not None:
        raise ValueError("draw_uniforms: pass generator or seed, not both")
    if generator is None and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    return torch.rand(shape, generator=generator, dtype=torch.float64, device=device)


def _check_uniforms(u: torch.Tensor, shape: torch.Size | tuple, name: str) -> None:
    if tuple(u.shape) != tuple(shape):
        raise ValueError(f"{name}: uniforms must have shape {tuple(shape)}, got {tuple(u.shape)}")


def sample_bernoulli(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Binary draws: 1 where u < sigmoid(logits). Shapes: logits (...), u (...) -> (...) int64 in {0, 1}."""
    _check_uniforms(u, logits.shape, "sample_bernoulli")
    return (u.to(torch.float64) < torch.sigmoid(logits.to(torch.float64))).to(torch.int64)


def _split_mixture(params: torch.Tensor, channels: int, num_mixtures: int):
    """params (..., M + M*C*3 [+ M*3 if C == 3]) -> logit_probs (..., M), means, log_scales (..., C, M),
    coeffs (..., 3, M) or None. Layout: [logit_probs | means | log_scales | coeffs], each channel-major."""
    m, c = num_mixtures, channels
    expected = m + 3 * c * m if c != 3 else 10 * m
    if params.shape[-1] != expected:
        raise ValueError(f"discretized logistic mixture: params last dim must be {expected} for C={c}, "
                         f"M={m}, got {params.shape[-1]}")
    lead = params.shape[:-1]
    logit_probs = params[..., :m]
    rest = params[..., m:]
    means = rest[..., : c * m].reshape(*lead, c, m)
    log_scales = rest[..., c * m: 2 * c * m].reshape(*lead, c, m).clamp(min=-7.0)
    coeffs = torch.tanh(rest[..., 2 * c * m:].reshape(*lead, 3, m)) if c == 3 else None
    return logit_probs, means, log_scales, coeffs


def mixture_params_size(channels: int, num_mixtures: int) -> int:
    """Number of network outputs per pixel of a discretized logistic mixture (10*M for RGB)."""
    return 10 * num_mixtures if channels == 3 else num_mixtures * (1 + 3 * channels)


def sample_discretized_logistic_mixture(params: torch.Tensor, u: torch.Tensor, *, channels: int,
                                        num_mixtures: int, bins: int = 256,
                                        temperature: float = 1.0) -> torch.Tensor:
    """Draw pixel values in [-1, 1] from a discretized logistic mixture.

    Shapes: params (N, P) with P = :func:`mixture_params_size`, u (N, 1 + C): u[:, 0] picks the mixture
    component (inverse CDF of softmax(logit_probs)), u[:, 1 + c] is the logistic draw of channel c.
    Returns (N, C) values on the `bins` grid of [-1, 1]. RGB channels are coupled as in PixelCNN++ (G's
    mean depends on R, B's on R and G), through the *discretized* values, so the draw follows exactly the
    pmf of :func:`discretized_logistic_mixture_log_prob`. `temperature` scales the logistic scales.
    """
    _check_uniforms(u, (params.shape[0], 1 + channels), "sample_discretized_logistic_mixture")
    logit_probs, means, log_scales, coeffs = _split_mixture(params.to(torch.float64), channels, num_mixtures)
    k = sample_categorical(logit_probs, u[:, 0])
    pick = F.one_hot(k, num_mixtures).to(torch.float64).unsqueeze(1)  # (N, 1, M)
    mu = (means * pick).sum(-1)
    s = torch.exp((log_scales * pick).sum(-1)) * temperature
    v = u[:, 1:].to(torch.float64).clamp(1e-5, 1.0 - 1e-5)
    x = mu + s * (torch.log(v) - torch.log1p(-v))
    grid = lambda t: dequantize(quantize(t, bins), bins, torch.float64)
    if coeffs is not None:
        c = (coeffs * pick).sum(-1)  # (N, 3)
        x0 = grid(x[:, 0])
        x1 = grid(x[:, 1] + c[:, 0] * x0)
        x2 = grid(x[:, 2] + c[:, 1] * x0 + c[:, 2] * x1)
        return torch.stack([x0, x1, x2], dim=1).to(params.dtype)
    return grid(x).to(params.dtype)


def quantize(x: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """Values in [-1, 1] -> integer levels in [0, bins) (the grid the mixture is discretized on)."""
    return torch.round((x.to(torch.float64) + 1.0) * (bins - 1) / 2.0).clamp(0, bins - 1).to(torch.int64)


def dequantize(levels: torch.Tensor, bins: int = 256, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Integer levels in [0, bins) -> values in [-1, 1]."""
    return levels.to(dtype) * (2.0 / (bins - 1)) - 1.0


def discretized_logistic_mixture_log_prob(x: torch.Tensor, params: torch.Tensor, *, num_mixtures: int,
                                          bins: int = 256) -> torch.Tensor:
    """Log-likelihood (nats) of images under a discretized logistic mixture, per pixel.

    Shapes: x (N, C, H, W) in [-1, 1] on the `bins` grid, params (N, P, H, W) -> (N, H, W).
    The edge bins take the whole tail mass, as in PixelCNN++.
    """
    n, c, h, w = x.shape
    p = params.permute(0, 2, 3, 1)  # (N, H, W, P)
    logit_probs, means, log_scales, coeffs = _split_mixture(p, c, num_mixtures)
    xs = x.permute(0, 2, 3, 1).unsqueeze(-1)  # (N, H, W, C, 1)
    if coeffs is not None:
        m1 = means[..., 1, :] + coeffs[..., 0, :] * xs[..., 0, :]
        m2 = means[..., 2, :] + coeffs[..., 1, :] * xs[..., 0, :] + coeffs[..., 2, :] * xs[..., 1, :]
        means = torch.stack([means[..., 0, :], m1, m2], dim=-2)
    centered = xs - means
    inv_s = torch.exp(-log_scales)
    half = 1.0 / (bins - 1)
    plus_in, min_in = inv_s * (centered + half), inv_s * (centered - half)
    cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
    log_cdf_plus = plus_in - F.softplus(plus_in)  # log sigmoid(plus_in): the lowest bin
    log_one_minus_cdf_min = -F.softplus(min_in)  # log(1 - sigmoid(min_in)): the highest bin
    mid_in = inv_s * centered
    log_pdf_mid = mid_in - log_scales - 2.0 * F.softplus(mid_in)  # fallback when cdf_delta underflows
    inner = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp_min(_TINY)),
                        log_pdf_mid - math.log((bins - 1) / 2.0))
    log_probs = torch.where(xs < -0.999, log_cdf_plus, torch.where(xs > 0.999, log_one_minus_cdf_min, inner))
    log_probs = log_probs.sum(dim=-2) + torch.log_softmax(logit_probs, dim=-1)  # (N, H, W, M)
    return torch.logsumexp(log_probs, dim=-1)


def bits_per_dim(log_prob: torch.Tensor, num_dims: int) -> torch.Tensor:
    """Negative log-likelihood in bits per dimension: -sum(log_prob) / (num_dims * ln 2), per image.

    Shapes: log_prob (N, ...) in nats -> (N,).
    """
    return -log_prob.reshape(log_prob.shape[0], -1).sum(1) / (num_dims * math.log(2.0))
