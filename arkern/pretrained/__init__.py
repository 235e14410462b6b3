"""Trained models shipped with arkern, and the checkpoint format: safetensors weights + a JSON config.

    model = arkern.load("mnist")      # class-conditional GatedPixelCNN, binarised 28x28 MNIST digits
    model = arkern.load("digits")     # class-conditional GatedPixelCNN, 8x8 handwritten digits, 4 grey levels
    model = arkern.load("tones")      # WaveNet, 8 kHz synthetic melody (μ-law, 256 classes)
    model = arkern.load("out/digits.safetensors")   # or "out/digits.json", or "out/digits"
    model = arkern.load("out/cifar")               # a folder with model.json (what `arkern convert` writes)

A checkpoint is two files side by side: ``NAME.json`` (model type, constructor arguments, the weights
file's name and sha256, and a free ``meta`` section: data, sampling defaults, training figures) and
``NAME.safetensors`` (the state_dict). Loading never unpickles anything. Every failure names the file and
the problem: a missing file is a FileNotFoundError; a corrupted or truncated weights file, a checksum
mismatch, a config that does not describe the weights, a non-finite weight are ValueErrors.

Loading checks the config against the weights file's header before anything of the model's size is built:
the model is first built on the meta device (no memory), and the build stops as soon as it registers more
parameters, or more parameter elements, than the file holds -- so a 300-byte config asking for 100,000
layers or a 10^9-channel layer fails in milliseconds. The weights file must sit in the config's folder.

The bundled models are reproduced by ``arkern train mnist|digits|tones --out arkern/pretrained``
(:mod:`arkern.training`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from arkern.families import checkpoint_model_type, checkpoint_type_name, checkpoint_type_names, family_of

FORMAT = "arkern-checkpoint"
VERSION = 1
BUNDLED = ("mnist", "digits", "tones")
HERE = Path(__file__).resolve().parent

__all__ = ["load", "save", "load_config", "build_model", "bundled", "checkpoint_paths", "MODEL_TYPES"]


# the model types a checkpoint may name: the classes the registered families declare (arkern.families)
MODEL_TYPES = checkpoint_type_names()


def bundled() -> list[str]:
    """Names of the bundled models present in this installation (e.g. ["mnist", "digits", "tones"])."""
    return [name for name in BUNDLED if (HERE / f"{name}.json").is_file()]


def checkpoint_paths(name_or_path: str | os.PathLike) -> tuple[Path, Path | None]:
    """Resolve a bundled name or a path to (config .json, weights .safetensors or None if not yet known).

    Accepts a bundled name ("digits"), ``X.json``, ``X.safetensors``, ``X`` (meaning X.json) or a directory
    holding ``model.json`` (or exactly one .json). The weights
    path of a .json is read from the config, so it is returned as None here.
    """
    text = os.fspath(name_or_path)
    if text in BUNDLED and not os.path.exists(text):
        return HERE / f"{text}.json", None
    path = Path(text)
    if path.suffix == ".safetensors":
        return path.with_suffix(".json"), path
    if path.suffix == ".json":
        return path, None
    if path.is_dir():  # a folder holding one checkpoint (``arkern convert --out DIR`` writes DIR/model.json)
        configs = sorted(path.glob("*.json"))
        if (path / "model.json").is_file():
            return path / "model.json", None
        if len(configs) == 1:
            return configs[0], None
        raise FileNotFoundError(f"arkern.load: {path} is a directory without a model.json and with "
                                f"{len(configs)} .json files; name the checkpoint's .json or .safetensors file")
    if not path.suffix and Path(f"{text}.json").is_file():
        return Path(f"{text}.json"), None
    raise FileNotFoundError(f"arkern.load: no model {text!r}: not a bundled model ({', '.join(BUNDLED)}) and not "
                            f"a checkpoint file (.json / .safetensors)")


def load_config(name_or_path: str | os.PathLike) -> dict:
    """The validated JSON config of a checkpoint (see :func:`checkpoint_paths` for what is accepted)."""
    return _read_config(checkpoint_paths(name_or_path)[0])


def _read_config(json_path: Path) -> dict:
    if not json_path.is_file():
        raise FileNotFoundError(f"{json_path}: checkpoint config not found")
    try:
        config = json.loads(json_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{json_path}: not a valid JSON config ({e})") from None
    except RecursionError:
        raise ValueError(f"{json_path}: not a valid JSON config (nested too deeply)") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{json_path}: not an arkern checkpoint config (expected \"format\": \"{FORMAT}\")")
    if config.get("version") != VERSION:
        raise ValueError(f"{json_path}: unsupported checkpoint version {config.get('version')!r} "
                         f"(this arkern reads version {VERSION})")
    if not isinstance(config.get("model"), str) or checkpoint_model_type(config["model"]) is None:
        raise ValueError(f"{json_path}: unknown model type {config.get('model')!r}; expected one of "
                         f"{checkpoint_type_names()}")
    if not isinstance(config.get("kwargs"), dict):
        raise ValueError(f"{json_path}: \"kwargs\" must be an object of constructor arguments")
    weights = config.get("weights")
    if not isinstance(weights, dict) or not isinstance(weights.get("file"), str):
        raise ValueError(f"{json_path}: \"weights\" must be an object with the weights \"file\" name")
    name = weights["file"]
    if name in ("", ".", "..") or Path(name).name != name or "/" in name or "\\" in name:
        raise ValueError(f"{json_path}: the weights \"file\" must be a file name in the checkpoint's folder "
                         f"(no directories, not absolute), got {name!r}")
    sha = weights.get("sha256")
    if sha is not None and not (isinstance(sha, str) and len(sha) == 64
                                and all(c in "0123456789abcdef" for c in sha)):
        raise ValueError(f"{json_path}: the weights \"sha256\" must be 64 lowercase hex digits, got {sha!r}")
    if not isinstance(config.get("meta", {}), dict):
        raise ValueError(f"{json_path}: \"meta\" must be an object")
    return config


def build_model(model_type: str, kwargs: dict) -> nn.Module:
    """A freshly initialised model of `model_type` (one of MODEL_TYPES) from its constructor arguments."""
    cls = checkpoint_model_type(model_type)
    if cls is None:
        raise ValueError(f"build_model: unknown model type {model_type!r}; expected one of {checkpoint_type_names()}")
    return cls(**kwargs)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_checksum(path: Path, expected_sha256: str | None) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    if expected_sha256 is not None:
        got = _sha256(path)
        if got != expected_sha256:
            raise ValueError(f"{path}: checksum mismatch (sha256 {got[:16]}..., the config expects "
                             f"{expected_sha256[:16]}...): the file is corrupted or not the one its config describes")


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: not a valid safetensors file (corrupted or truncated?): {e}") from None


Signature = dict[str, tuple[tuple[int, ...], bool]]  # state_dict key -> (shape, is floating point)

_FLOAT_CODES = ("F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2")


def _signature(tensors: dict[str, torch.Tensor]) -> Signature:
    return {k: (tuple(t.shape), t.is_floating_point()) for k, t in tensors.items()}


def _read_header(path: Path) -> Signature:
    """Names, shapes and float-ness of the tensors in a safetensors file, from its header only."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            slices = {k: f.get_slice(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
            return {k: (tuple(v.get_shape()), v.get_dtype() in _FLOAT_CODES) for k, v in slices.items()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: not a valid safetensors file (corrupted or truncated?): {e}") from None


def _build_within(model_type: str, kwargs: dict, found: Signature, json_path: Path) -> nn.Module:
    """Build the model on the meta device (no memory), stopping as soon as it registers more parameters, or
    more parameter elements, than the weights file holds: every parameter is in the state_dict, so a model
    that exceeds either count cannot match, however long its constructor would run."""
    count, elements = 0, 0
    limit_count, limit_elements = len(found), sum(math.prod(shape) for shape, _ in found.values())

    def budget(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        nonlocal count, elements
        if param is None:
            return
        count, elements = count + 1, elements + param.numel()
        if count > limit_count or elements > limit_elements:
            raise _TooLarge(f"{json_path}: kwargs {kwargs} describe a {model_type} with more parameters than "
                            f"its weights file holds ({limit_count} tensors, {limit_elements} elements)")

    handle = torch.nn.modules.module.register_module_parameter_registration_hook(budget)
    try:
        with torch.device("meta"), _SkipMetaFills():
            return build_model(model_type, kwargs)
    except _TooLarge as e:
        raise ValueError(str(e)) from None
    except (TypeError, ValueError, OverflowError, RuntimeError) as e:
        raise ValueError(f"{json_path}: cannot build {model_type} from kwargs {kwargs}: {e}") from None
    finally:
        handle.remove()


class _SkipMetaFills(TorchFunctionMode):
    """In-place fills of meta tensors (weight init) compute nothing; torch would run some of them through
    Python decompositions that import its compiler (seconds) -- skip them."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        target = args[0] if args else next(iter(kwargs.values()), None)  # nn.init passes tensor=...
        if (name.endswith("_") and not name.startswith("_") and isinstance(target, torch.Tensor)
                and target.device.type == "meta"):
            return target
        return func(*args, **kwargs)


class _TooLarge(Exception):
    """Raised from inside a constructor by the parameter budget of :func:`_build_within`."""


def _check_matches(found: Signature, expected: Signature, weights_path: Path, json_path: Path) -> None:
    problems = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing:
        problems.append(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    for key in sorted(set(expected) & set(found)):
        (shape, floating), (want, want_floating) = found[key], expected[key]
        if shape != want:
            problems.append(f"{key} has shape {shape}, the config gives {want}")
        elif floating != want_floating:
            problems.append(f"{key} is {'' if floating else 'not '}floating point, unlike the model's")
    if problems:
        raise ValueError(f"{weights_path} does not match the config {json_path}: " + "; ".join(problems[:6]))


def _check_finite(tensors: dict[str, torch.Tensor], weights_path: Path) -> None:
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ValueError(f"{weights_path}: non-finite values (nan/inf) in {bad[:5]}")


def load(name_or_path: str | os.PathLike, *, device: torch.device | str | None = None) -> nn.Module:
    """Load a bundled model ("mnist", "digits", "tones") or a checkpoint file, ready to sample (eval mode).

    The returned model has a ``meta`` dict attribute: the config's meta section (data, sampling defaults
    such as the image ``shape`` or the audio ``sample_rate``, training figures) plus ``name``/``path``.

    Raises:
        FileNotFoundError: unknown name, or a missing config / weights file (the message names it).
        ValueError: invalid config, corrupted or truncated weights, checksum mismatch, weights that do not
            match the config (checked against the file's header before the model is built), non-finite
            weights, a weights file outside the config's folder, device="meta".
    """
    if device is not None:
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"arkern.load: device {device!r} is not a torch device ({e})") from None
    if device is not None and device.type == "meta":
        raise ValueError("arkern.load: device='meta' would drop the weights just read; load on a real device "
                         "(build the model class under torch.device('meta') for a weightless one)")
    json_path, weights_path = checkpoint_paths(name_or_path)
    config = _read_config(json_path)
    named = json_path.parent / config["weights"]["file"]
    if weights_path is None:
        weights_path = named
    elif weights_path.resolve() != named.resolve():
        raise ValueError(f"{json_path}: describes weights {config['weights']['file']!r}, not {weights_path.name!r}")
    _check_checksum(weights_path, config["weights"].get("sha256"))
    found = _read_header(weights_path)
    shell = _build_within(config["model"], config["kwargs"], found, json_path)
    _check_matches(found, _signature(shell.state_dict()), weights_path, json_path)
    tensors = _read_weights(weights_path)
    _check_matches(_signature(tensors), _signature(shell.state_dict()), weights_path, json_path)
    _check_finite(tensors, weights_path)
    model = build_model(config["model"], config["kwargs"])
    model.load_state_dict(tensors, strict=True)
    model.eval()
    if device is not None:
        model.to(device)
    model.meta = {**config.get("meta", {}), "name": json_path.stem, "path": str(weights_path)}
    return model


def save(model: nn.Module, path: str | os.PathLike, *, kwargs: dict | None = None,
         meta: dict | None = None) -> tuple[Path, Path]:
    """Write `model` as ``PATH.safetensors`` + ``PATH.json`` (PATH without suffix) and return both paths.

    kwargs: the constructor arguments that rebuild the model (default for WaveNet: its config). They are
    checked here: a model built from them must have exactly the state_dict of `model`.
    meta: free JSON-serialisable information (sampling defaults, data, training figures).
    """
    from safetensors.torch import save_file

    model_type = checkpoint_type_name(model)
    if model_type is None:
        raise TypeError(f"save: unsupported model type {type(model).__name__}; expected one of "
                        f"{checkpoint_type_names()}")
    if kwargs is None:
        kwargs = family_of(model).constructor_kwargs(model)
        if kwargs is None:
            raise ValueError(f"save: pass kwargs= (the constructor arguments of the {model_type})")
    base = Path(os.fspath(path))
    if base.suffix in (".json", ".safetensors"):
        base = base.with_suffix("")
    json_path, weights_path = base.with_suffix(".json"), base.with_suffix(".safetensors")
    with torch.device("meta"), _SkipMetaFills():
        rebuilt = build_model(model_type, kwargs)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    _check_matches(_signature(state), _signature(rebuilt.state_dict()), weights_path, json_path)
    _check_finite(state, weights_path)
    base.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(weights_path), metadata={"format": FORMAT, "model": model_type})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(weights_path, 0o666 & ~umask)  # safetensors creates the file owner-only; package data is shared
    config = {"format": FORMAT, "version": VERSION, "model": model_type, "kwargs": kwargs,
              "weights": {"file": weights_path.name, "sha256": _sha256(weights_path),
                          "parameters": sum(v.numel() for v in state.values())},
              "meta": meta or {}}
    json_path.write_text(json.dumps(config, indent=2) + "\n")
    return json_path, weights_path
