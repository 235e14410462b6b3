"""Output heads of the WaveNet family: log-likelihoods and draws from pre-drawn uniforms.

- ``"softmax"``: A-way categorical over μ-law classes; one uniform per step, drawn by
  :func:`arkern.distributions.sample_categorical` (inverse CDF, with temperature / top-k / top-p).
- ``"logistic_mixture"``: wavenet_vocoder's discretized mixture of M logistics; the head gives 3M channels
  (mixture logits, means, log-scales clamped below at ``log_scale_min``). Two uniforms per step:
  ``u[..., 0]`` picks the component by inverse CDF of softmax(logits) (the warpers apply to this choice),
  ``u[..., 1]`` is the logistic quantile: v = clamp(u, 1e-5, 1 - 1e-5), x = mean + exp(log_scale) ·
  (log v - log(1 - v)), clamped to [-1, 1] (not rounded to a bin, as upstream). The likelihood of x is the
  probability of its bin among ``num_classes`` bins over [-1, 1], with upstream's edge cases.
- ``"gaussian"``: one Normal; the head gives 2 channels (mean, log-scale clamped at ``log_scale_min``). One
  uniform per step: x = mean + exp(log_scale) · Φ⁻¹(clamp(u, 1e-5, 1 - 1e-5)), clamped to [-1, 1]; the
  likelihood is the continuous log-density (wavenet_vocoder's ``Normal`` output).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from arkern.distributions import check_warpers, sample_categorical

HEADS = ("softmax", "logistic_mixture", "gaussian")
U_EPS = 1e-5  # continuous draws clamp their uniform to [U_EPS, 1 - U_EPS] (wavenet_vocoder's range)


def head_channels(head: str, num_classes: int, num_mixtures: int) -> int:
    """Output channels of a head."""
    return {"softmax": num_classes, "logistic_mixture": 3 * num_mixtures, "gaussian": 2}[head]


def uniforms_per_step(head: str) -> int:
    """How many uniforms one step of one row consumes (see the module docstring)."""
    return 2 if head == "logistic_mixture" else 1


def log_prob(head: str, out: torch.Tensor, y: torch.Tensor, *, num_classes: int, log_scale_min: float
             ) -> torch.Tensor:
    """log p(y) per position: out (B, C, T) head outputs, y (B, T) int64 classes or floats in [-1, 1] -> (B, T)."""
    if head == "softmax":
        return -F.cross_entropy(out, y, reduction="none")
    if head == "gaussian":
        mean, log_scale = out[:, 0], out[:, 1].clamp(min=log_scale_min)
        z = (y - mean) * torch.exp(-log_scale)
        return -0.5 * z * z - log_scale - 0.5 * math.log(2 * math.pi)
    m = out.shape[1] // 3
    logits, means = out[:, :m], out[:, m:2 * m]
    log_scales = out[:, 2 * m:].clamp(min=log_scale_min)
    x = y.unsqueeze(1)
    centered = x - means
    inv_s = torch.exp(-log_scales)
    half_bin = 1.0 / (num_classes - 1)
    plus_in, min_in, mid_in = inv_s * (centered + half_bin), inv_s * (centered - half_bin), inv_s * centered
    log_cdf_plus = plus_in - F.softplus(plus_in)            # bin at -1: log sigmoid(plus_in)
    log_one_minus_cdf_min = -F.softplus(min_in)             # bin at +1: log(1 - sigmoid(min_in))
    cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
    log_pdf_mid = mid_in - log_scales - 2.0 * F.softplus(mid_in)  # tiny bins: density times bin width
    inner = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp(min=1e-12)),
                        log_pdf_mid - math.log((num_classes - 1) / 2))
    lp = torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, inner))
    return torch.logsumexp(lp + F.log_softmax(logits, dim=1), dim=1)


def check_head_warpers(head: str, temperature: float, top_k: int | None, top_p: float | None, who: str) -> None:
    """Warpers apply to a categorical choice: the classes (softmax) or the component (mixture); a Gaussian has
    none, so it takes only the defaults."""
    check_warpers(temperature, top_k, top_p, who)
    if head == "gaussian" and (temperature != 1.0 or top_k is not None or top_p is not None):
        raise ValueError(f"{who}: a Gaussian head has no categorical choice to warp: temperature must be 1 and "
                         f"top_k/top_p None, got {temperature}, {top_k}, {top_p}")


def sample(head: str, out: torch.Tensor, u: torch.Tensor, *, log_scale_min: float, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """One draw per row: out (B, C) head outputs of one step, u (B,) or (B, 2) uniforms -> (B,) int64 classes
    (softmax) or float64 samples in [-1, 1]."""
    if head == "softmax":
        return sample_categorical(out, u, temperature=temperature, top_k=top_k, top_p=top_p)
    out = out.to(torch.float64)
    if head == "gaussian":
        v = u.to(torch.float64).clamp(U_EPS, 1 - U_EPS)
        x = out[:, 0] + torch.exp(out[:, 1].clamp(min=log_scale_min)) * torch.special.ndtri(v)
        return x.clamp(-1.0, 1.0)
    m = out.shape[1] // 3
    k = sample_categorical(out[:, :m], u[:, 0], temperature=temperature, top_k=top_k, top_p=top_p)
    mean = out[:, m:2 * m].gather(1, k[:, None])[:, 0]
    log_scale = out[:, 2 * m:].gather(1, k[:, None])[:, 0].clamp(min=log_scale_min)
    v = u[:, 1].to(torch.float64).clamp(U_EPS, 1 - U_EPS)
    return (mean + torch.exp(log_scale) * (torch.log(v) - torch.log1p(-v))).clamp(-1.0, 1.0)
