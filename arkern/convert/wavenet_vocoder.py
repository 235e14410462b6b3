"""Source ``"wavenet_vocoder"``: r9y9/wavenet_vocoder checkpoints (``{"state_dict", "global_step", ...}``,
also the ``_ema`` files) as :class:`arkern.models.WaveNet`.

Config: the upstream ``WaveNet(...)`` keyword arguments (``out_channels, layers, stacks, residual_channels,
gate_channels, skip_out_channels, kernel_size, cin_channels, gin_channels, n_speakers, weight_normalization,
upsample_conditional_features, upsample_scales, freq_axis_kernel_size, scalar_input, use_speaker_embedding,
legacy``; master's ``upsample_params, upsample_net, output_distribution, cin_pad``; ``dropout`` is ignored)
plus what lives outside the module: ``log_scale_min`` and ``num_classes`` (the bins of the mixture of
logistics, hparams' ``quantize_channels``; both required for scalar-input models) and optionally
``sample_rate`` (kept in the model's meta for ``arkern sample``).

Two layouts, told apart by the keys: the PyPI release 0.1.1 (the published LJSpeech checkpoint;
``upsample_conv.N`` ConvTranspose2d + ReLU, biased conditioning projections, skip sum scaled by √0.5 after
every layer when ``legacy``) and current master (``upsample_net.*`` stretch + Conv2d upsampler, unbiased
conditioning projections, skip sum scaled by √(1/layers), ``output_distribution="Normal"`` for a Gaussian).
Weight norm is folded. One-hot input becomes an embedding table (the 1×1 conv's columns plus its bias); the
start sample is upstream's synthesis start, ``mulaw_quantize(0) = (out_channels - 1) // 2`` (127 for 256
classes) or 0.0 for scalar input, so ``model.log_prob`` equals upstream's loss on [start, x[:-1]] -> x.
"""

from __future__ import annotations

import math

import torch

from arkern.convert.checkpoint import StateReader
from arkern.models.wavenet import WaveNet

SOURCE = "wavenet_vocoder"
ACCEPTED = {"out_channels", "layers", "stacks", "residual_channels", "gate_channels", "skip_out_channels",
            "kernel_size", "dropout", "cin_channels", "gin_channels", "n_speakers", "weight_normalization",
            "upsample_conditional_features", "upsample_scales", "freq_axis_kernel_size", "scalar_input",
            "use_speaker_embedding", "legacy", "upsample_params", "upsample_net", "output_distribution", "cin_pad",
            "log_scale_min", "num_classes", "sample_rate"}


def _master_upsampler(r: StateReader, params: dict, cin: int) -> dict:
    """Config of master's upsample_net from its params and keys."""
    allowed = {"upsample_scales", "upsample_activation", "upsample_activation_params", "mode",
               "freq_axis_kernel_size", "cin_pad", "cin_channels"}
    unknown = set(params) - allowed
    if unknown:
        raise ValueError(f"arkern.convert({SOURCE!r}): upsample_params has unknown keys {sorted(unknown)}")
    act = str(params.get("upsample_activation", "none"))
    if act not in ("none", "ReLU") or params.get("mode", "nearest") != "nearest":
        raise ValueError(f"arkern.convert({SOURCE!r}): supported upsample_activation 'none'/'ReLU' with mode "
                         f"'nearest', got {act!r}, {params.get('mode')!r}")
    if params.get("cin_channels", cin) != cin:
        raise ValueError(f"arkern.convert({SOURCE!r}): upsample_params cin_channels {params['cin_channels']} != "
                         f"cin_channels {cin}")
    return dict(upsample="stretch_conv2d", upsample_scales=tuple(params.get("upsample_scales", (4, 4, 4, 4))),
                freq_axis_kernel_size=int(params.get("freq_axis_kernel_size", 1)),
                upsample_activation="relu" if act == "ReLU" else "none",
                upsample_conv_in=r.has_prefix("upsample_net.conv_in."))


def convert(state: dict[str, torch.Tensor], **config: object) -> WaveNet:
    """wavenet_vocoder state dict + constructor kwargs -> WaveNet (see the module docstring)."""
    unknown = set(config) - ACCEPTED
    if unknown:
        raise ValueError(f"arkern.convert({SOURCE!r}): unknown config keys {sorted(unknown)}; accepted: "
                         f"{sorted(ACCEPTED)}")
    r = StateReader(state, SOURCE)
    master = (r.has_prefix("upsample_net.") or
              any(k in config for k in ("upsample_params", "upsample_net", "output_distribution", "cin_pad")))
    if master and "legacy" in config:
        raise ValueError(f"arkern.convert({SOURCE!r}): 'legacy' is a 0.1.1 option, but the checkpoint/config is "
                         f"master's layout (upsample_net.*, upsample_params, output_distribution or cin_pad)")
    A = int(config.get("out_channels", 256))
    L, stacks = int(config.get("layers", 20)), int(config.get("stacks", 2))
    R, G = int(config.get("residual_channels", 512)), int(config.get("gate_channels", 512))
    S, K = int(config.get("skip_out_channels", 512)), int(config.get("kernel_size", 3))
    cin, gin = int(config.get("cin_channels", -1)), int(config.get("gin_channels", -1))
    scalar = bool(config.get("scalar_input", False))
    use_emb = bool(config.get("use_speaker_embedding", not master))
    H = G // 2
    cfg: dict[str, object] = dict(num_layers=L, stacks=stacks, kernel_size=K, residual_channels=R,
                                  gate_channels=G, skip_channels=S, end_channels=S, residual_scale=math.sqrt(0.5))
    cfg["skip_scale"] = "sqrt_layers" if master else ("legacy" if config.get("legacy", True) else "none")
    if scalar:
        dist = str(config.get("output_distribution", "Logistic"))
        if dist not in ("Logistic", "Normal"):
            raise ValueError(f"arkern.convert({SOURCE!r}): output_distribution must be 'Logistic' or 'Normal', "
                             f"got {dist!r}")
        need = ["log_scale_min"] + (["num_classes"] if dist == "Logistic" else [])
        missing = [k for k in need if k not in config]
        if missing:
            raise ValueError(f"arkern.convert({SOURCE!r}): scalar-input models need {missing} (hparams' "
                             f"log_scale_min and quantize_channels; they live outside the module)")
        cfg.update(input="scalar", log_scale_min=float(config["log_scale_min"]))
        if dist == "Normal":
            if A != 2:
                raise ValueError(f"arkern.convert({SOURCE!r}): output_distribution='Normal' is supported as one "
                                 f"Gaussian (out_channels=2), got out_channels={A}")
            cfg.update(head="gaussian", num_classes=2)
        else:
            if A % 3:
                raise ValueError(f"arkern.convert({SOURCE!r}): a mixture of logistics has out_channels = 3 x "
                                 f"mixtures, got {A}")
            cfg.update(head="logistic_mixture", num_mixtures=A // 3, num_classes=int(config["num_classes"]))
    else:
        cfg.update(input="embedding", num_classes=A, start_class=(A - 1) // 2)
    if cin > 0:
        cfg.update(cond_channels=cin, cond_bias=not master)
        if config.get("upsample_conditional_features", False):
            if master:
                params = dict(config.get("upsample_params") or {})
                cfg.update(_master_upsampler(r, params, cin))
                cfg["cin_pad"] = int(params.get("cin_pad", config.get("cin_pad", 0)))
            else:
                scales = config.get("upsample_scales")
                if not scales:
                    raise ValueError(f"arkern.convert({SOURCE!r}): upsample_conditional_features needs "
                                     f"upsample_scales")
                cfg.update(upsample="convt2d", upsample_scales=tuple(int(s) for s in scales),
                           freq_axis_kernel_size=int(config.get("freq_axis_kernel_size", 3)))
    if gin > 0:
        cfg.update(global_channels=gin, global_bias=not master)
        if use_emb:
            if not config.get("n_speakers"):
                raise ValueError(f"arkern.convert({SOURCE!r}): use_speaker_embedding needs n_speakers")
            cfg["speakers"] = int(config["n_speakers"])
    model = WaveNet(**cfg)
    out: dict[str, torch.Tensor] = {}
    w = r.take_weight("first_conv", (R, 1 if scalar else A, 1))
    b = r.take("first_conv.bias", (R,))
    if scalar:
        out["input_proj.weight"], out["input_proj.bias"] = w[:, :, 0], b
    else:
        out["embed_cur.weight"] = w[:, :, 0].t() + b  # one-hot column + bias = an embedding row
    cond_w, cond_b, glob_w, glob_b = [], [], [], []
    for i in range(L):
        p = f"conv_layers.{i}"
        out[f"dilated.{i}.weight"] = r.take_weight(f"{p}.conv", (G, R, K))
        out[f"dilated.{i}.bias"] = r.take(f"{p}.conv.bias", (G,))
        if i < L - 1:
            out[f"res.{i}.weight"] = r.take_weight(f"{p}.conv1x1_out", (R, H, 1))
            out[f"res.{i}.bias"] = r.take(f"{p}.conv1x1_out.bias", (R,))
        else:  # the last layer's residual output feeds nothing
            r.skip([k for k in r.state if k.startswith(f"{p}.conv1x1_out.")])
        out[f"skip.{i}.weight"] = r.take_weight(f"{p}.conv1x1_skip", (S, H, 1))
        out[f"skip.{i}.bias"] = r.take(f"{p}.conv1x1_skip.bias", (S,))
        if cin > 0:
            cond_w.append(r.take_weight(f"{p}.conv1x1c", (G, cin, 1))[:, :, 0])
            if not master:
                cond_b.append(r.take(f"{p}.conv1x1c.bias", (G,)))
        if gin > 0:
            glob_w.append(r.take_weight(f"{p}.conv1x1g", (G, gin, 1))[:, :, 0])
            if not master:
                glob_b.append(r.take(f"{p}.conv1x1g.bias", (G,)))
    if cond_w:
        out["cond_proj.weight"] = torch.cat(cond_w)
        if cond_b:
            out["cond_proj.bias"] = torch.cat(cond_b)
    if glob_w:
        out["global_proj.weight"] = torch.cat(glob_w)
        if glob_b:
            out["global_proj.bias"] = torch.cat(glob_b)
    if model.speaker_embed is not None:
        out["speaker_embed.weight"] = r.take("embed_speakers.weight", (model.config.speakers, gin))
    out["out.weight"] = r.take_weight("last_conv_layers.1", (S, S, 1))
    out["out.bias"] = r.take("last_conv_layers.1.bias", (S,))
    out["end.weight"] = r.take_weight("last_conv_layers.3", (A, S, 1))
    out["end.bias"] = r.take("last_conv_layers.3.bias", (A,))
    out.update(_upsampler_weights(r, model, master))
    r.finish()
    model.load_state_dict(out, strict=True)
    model.meta = {"kind": "audio", "encoding": "mulaw" if not scalar else "linear"}
    if "sample_rate" in config:
        model.meta["sample_rate"] = int(config["sample_rate"])
    return model


def _upsampler_weights(r: StateReader, model: WaveNet, master: bool) -> dict[str, torch.Tensor]:
    cfg = model.config
    if model.upsampler is None or cfg.upsample == "nearest":
        return {}
    fk, out = cfg.freq_axis_kernel_size, {}
    if not master:
        for i, s in enumerate(cfg.upsample_scales):  # ConvTranspose2d at even indices, ReLU between
            out[f"upsampler.layers.{i}.weight"] = r.take_weight(f"upsample_conv.{2 * i}", (1, 1, fk, s))
            out[f"upsampler.layers.{i}.bias"] = r.take(f"upsample_conv.{2 * i}.bias", (1,))
        return out
    C = cfg.cond_channels
    prefix = "upsample_net.upsample.up_layers" if cfg.upsample_conv_in else "upsample_net.up_layers"
    if cfg.upsample_conv_in:
        out["upsampler.conv_in.weight"] = r.take("upsample_net.conv_in.weight", (C, C, 2 * cfg.cin_pad + 1))
    per_scale = 3 if cfg.upsample_activation == "relu" else 2  # stretch, conv[, activation]
    for i, s in enumerate(cfg.upsample_scales):
        out[f"upsampler.layers.{i}.weight"] = r.take_weight(f"{prefix}.{per_scale * i + 1}", (1, 1, fk, 2 * s + 1))
    return out
