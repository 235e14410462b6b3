"""The bad-input corpus: one table of hostile calls to every public entry point.

Each row is (entry point, call, expected exception type, the argument its message must name). The call
must raise before any kernel runs -- no silent wrong result, no crash, no allocation sized by a hostile
number. Rows cover the cases of the reliability issue (dilation overflow, overlapping or foreign-device
states, non-finite noise, ...) and the ones that already behaved, so that they keep behaving.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import torch

import arkern
from arkern.backends import available_backends
from arkern.cli import main as cli_main
from arkern.compat import causal_conv1d as compat
from arkern.models import PixelCNN, PixelCNNpp, WaveNet
from arkern.models.pixelcnn_packing import pack_pixelcnn
from arkern.models.pixelcnnpp_packing import pack_pixelcnnpp
from arkern.models.wavenet import pack_wavenet
from arkern.ops import (
    causal_conv1d,
    causal_conv1d_update,
    causal_conv1d_varlen_states,
    masked_conv2d,
    masked_linear,
    pixelcnn_generate,
    pixelcnnpp_generate,
    shifted_conv2d,
    shifted_conv_transpose2d,
    wavenet_generate,
)
from arkern.pretrained import HERE
from arkern.sampling import generate

F64, I32 = torch.float64, torch.int32
HAS_CPP = "cpu" in available_backends("cpu")


@dataclass(frozen=True)
class Case:
    id: str
    call: Callable[[], object]
    exc: type[BaseException]
    names: str  # the argument the message must name
    needs_cpp: bool = False  # calls the compiled op directly


def _r(*shape: int, dtype: torch.dtype = F64, **kw: object) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype, **kw)


# ------------------------------------------------------------------------------------------ inputs


def _conv1d(**kw: object) -> object:
    """causal_conv1d on depthwise inputs (B=2, C=4, T=8, K=3) with keyword overrides."""
    args = dict(x=_r(2, 4, 8), weight=_r(4, 1, 3), bias=_r(4), dilation=1, groups=4)
    args.update(kw)
    return causal_conv1d(**args)


def _update(**kw: object) -> object:
    """causal_conv1d_update: one token for B=2, C=4, K=3, state (2, 4, 2)."""
    args = dict(x=_r(2, 4), conv_state=torch.zeros(2, 4, 2, dtype=F64), weight=_r(4, 1, 3), bias=_r(4), groups=4)
    args.update(kw)
    return causal_conv1d_update(**args)


def _update_op(state: torch.Tensor | None = None, x: torch.Tensor | None = None, dilation: int = 1,
               idx: torch.Tensor | None = None) -> object:
    """The compiled update op called directly, with none of the Python checks."""
    state = torch.zeros(2, 4, 2, dtype=F64) if state is None else state
    x = _r(2, 4, 1) if x is None else x
    return torch.ops.arkern.causal_conv1d_update(x, state, _r(4, 1, 3), None, dilation, 4, False, None, idx)


def _inference_state() -> torch.Tensor:
    with torch.inference_mode():
        return torch.zeros(2, 4, 2, dtype=F64)


def _cu(*values: int) -> torch.Tensor:
    return torch.tensor(values or (0, 2, 5), dtype=I32)


def _mconv(**kw: object) -> object:
    args = dict(x=_r(1, 3, 5, 5), weight=_r(6, 3, 3, 3), bias=_r(6), mask_type="B", color_groups=3)
    args.update(kw)
    return masked_conv2d(**args)


def _mlin(**kw: object) -> object:
    args = dict(x=_r(2, 5), weight=_r(3, 5), bias=_r(3), mask=torch.ones(3, 5, dtype=torch.bool))
    args.update(kw)
    return masked_linear(**args)


def _shifted(transpose: bool = False, **kw: object) -> object:
    w = _r(4, 6, 2, 3) if transpose else _r(6, 4, 2, 3)
    args = dict(x=_r(1, 4, 5, 5), weight=w, bias=_r(6), shift="down", stride=1)
    args.update(kw)
    return (shifted_conv_transpose2d if transpose else shifted_conv2d)(**args)


@cache
def _wavenet_packed():
    torch.manual_seed(0)
    return pack_wavenet(WaveNet(num_layers=2, residual_channels=4, skip_channels=4, num_classes=8,
                                max_dilation=2).eval())


def _wavenet(**kw: object) -> object:
    packed = _wavenet_packed()
    rings = [torch.zeros(1, d, packed.residual_channels).transpose(1, 2) for d in packed.dilations]
    args = dict(rings=rings, prev=torch.zeros(1, 2, dtype=torch.int64), t0=0, noise=torch.rand(1, 5, dtype=F64))
    args.update(kw)
    return wavenet_generate(packed, **args)


@cache
def _pixelcnn_packed():
    torch.manual_seed(0)
    return pack_pixelcnn(PixelCNN(image_channels=1, num_classes=4, hidden_channels=4, num_blocks=1).eval())


def _pixelcnn(**kw: object) -> object:
    packed = _pixelcnn_packed()
    args = dict(caches=packed.new_caches(1, 4, 4), image=torch.zeros(1, 1, 4, 4, dtype=torch.int64),
                noise=torch.rand(1, 1, 4, 4, dtype=F64))
    args.update(kw)
    return pixelcnn_generate(packed, **args)


@cache
def _pixelcnnpp_packed():
    torch.manual_seed(0)
    return pack_pixelcnnpp(PixelCNNpp(image_channels=1, num_bins=4, filters=4, num_resnets=1,
                                      num_mixtures=2).eval())


def _pixelcnnpp(**kw: object) -> object:
    args = dict(image=torch.zeros(1, 1, 4, 4, dtype=torch.int64), noise=torch.rand(1, 2, 4, 4, dtype=F64))
    args.update(kw)
    return pixelcnnpp_generate(_pixelcnnpp_packed(), **args)


def _nan_noise(shape: tuple[int, ...], value: float) -> torch.Tensor:
    noise = torch.rand(*shape, dtype=F64)
    noise.view(-1)[-1] = value
    return noise


# ------------------------------------------------------------------------------------------- table

OPS = [
    # causal_conv1d
    Case("conv1d dilation 2**62 with a final state", lambda: _conv1d(dilation=2**62, return_final_state=True),
         ValueError, "dilation"),
    Case("conv1d dilation 0", lambda: _conv1d(dilation=0), ValueError, "dilation"),
    Case("conv1d dilation float", lambda: _conv1d(dilation=1.5), TypeError, "dilation"),
    Case("conv1d compiled op dilation overflow",
         lambda: torch.ops.arkern.causal_conv1d(_r(1, 1, 8), _r(1, 1, 3), None, None, 2**62, 1, False),
         RuntimeError, "dilation", needs_cpp=True),
    Case("conv1d int x", lambda: _conv1d(x=torch.ones(2, 4, 8, dtype=torch.int64)), TypeError, "x"),
    Case("conv1d 2-D x", lambda: _conv1d(x=_r(4, 8)), ValueError, "x"),
    Case("conv1d T=0", lambda: _conv1d(x=_r(2, 4, 0)), ValueError, "x"),
    Case("conv1d groups not dividing", lambda: _conv1d(groups=3), ValueError, "groups"),
    Case("conv1d weight on meta", lambda: _conv1d(weight=_r(4, 1, 3, device="meta")), ValueError, "weight"),
    Case("conv1d initial_state shape", lambda: _conv1d(initial_state=_r(2, 4, 3)), ValueError, "initial_state"),
    Case("conv1d activation", lambda: _conv1d(activation="gelu"), ValueError, "activation"),
    Case("conv1d return_final_state str", lambda: _conv1d(return_final_state="yes"), TypeError,
         "return_final_state"),
    Case("conv1d unknown backend", lambda: _conv1d(backend="gpu"), ValueError, "backend"),
    # causal_conv1d_update
    Case("update expanded state", lambda: _update(conv_state=torch.zeros(1, 4, 2, dtype=F64).expand(2, 4, 2)),
         ValueError, "conv_state"),
    Case("update state sharing x's storage",
         lambda: (lambda s: _update(x=s.view(-1)[:8].view(2, 4), conv_state=s))(torch.zeros(2, 4, 2, dtype=F64)),
         ValueError, "conv_state"),
    Case("update leaf state requiring grad",
         lambda: _update(conv_state=torch.zeros(2, 4, 2, dtype=F64, requires_grad=True)), RuntimeError,
         "conv_state"),
    Case("update inference state outside inference mode", lambda: _update(conv_state=_inference_state()),
         RuntimeError, "conv_state"),
    Case("update state on meta", lambda: _update(conv_state=torch.zeros(2, 4, 2, dtype=F64, device="meta")),
         ValueError, "conv_state"),
    Case("update state too short", lambda: _update(conv_state=torch.zeros(2, 4, 1, dtype=F64)), ValueError,
         "conv_state"),
    Case("update repeated state row",
         lambda: _update(conv_state=torch.zeros(3, 4, 2, dtype=F64),
                         conv_state_indices=torch.tensor([1, 1], dtype=I32)),
         ValueError, "conv_state_indices"),
    Case("update state row out of range",
         lambda: _update(conv_state_indices=torch.tensor([0, 2], dtype=I32)), ValueError, "conv_state_indices"),
    Case("update int64 cache_seqlens", lambda: _update(cache_seqlens=torch.zeros(2, dtype=torch.int64)),
         TypeError, "cache_seqlens"),
    Case("update dilation 2**62", lambda: _update(dilation=2**62), ValueError, "conv_state"),
    Case("update compiled op: repeated state row",
         lambda: _update_op(torch.zeros(3, 4, 2, dtype=F64), idx=torch.tensor([1, 1], dtype=I32)), RuntimeError,
         "conv_state_indices", needs_cpp=True),
    Case("update compiled op: expanded state", lambda: _update_op(torch.zeros(1, 4, 2, dtype=F64).expand(2, 4, 2)),
         RuntimeError, "conv_state", needs_cpp=True),
    Case("update compiled op: meta state", lambda: _update_op(torch.zeros(2, 4, 2, dtype=F64, device="meta")),
         ValueError, "conv_state", needs_cpp=True),
    Case("update compiled op: leaf state requiring grad",
         lambda: _update_op(torch.zeros(2, 4, 2, dtype=F64, requires_grad=True)), RuntimeError, "conv_state",
         needs_cpp=True),
    Case("update compiled op: dilation overflow", lambda: _update_op(dilation=2**62), RuntimeError, "dilation",
         needs_cpp=True),
    # causal_conv1d_varlen_states
    Case("varlen state_len 0", lambda: causal_conv1d_varlen_states(_r(5, 3), _cu(), 0), ValueError, "state_len"),
    Case("varlen state_len 2**62", lambda: causal_conv1d_varlen_states(_r(5, 3), _cu(), 2**62), ValueError,
         "state_len"),
    Case("varlen cu_seqlens decreasing", lambda: causal_conv1d_varlen_states(_r(5, 3), _cu(0, 4, 2), 2),
         ValueError, "cu_seqlens"),
    Case("varlen cu_seqlens float", lambda: causal_conv1d_varlen_states(_r(5, 3), torch.tensor([0.0, 5.0]), 2),
         TypeError, "cu_seqlens"),
    Case("varlen x on meta", lambda: causal_conv1d_varlen_states(_r(5, 3, device="meta"), _cu(), 2), ValueError,
         "x"),
    # masked_conv2d
    Case("mconv dilation 0", lambda: _mconv(dilation=0), ValueError, "dilation"),
    Case("mconv even kernel", lambda: _mconv(weight=_r(6, 3, 2, 3)), ValueError, "weight"),
    Case("mconv mask_type", lambda: _mconv(mask_type="C"), ValueError, "mask_type"),
    Case("mconv color_groups not dividing", lambda: _mconv(color_groups=2), ValueError, "color_groups"),
    Case("mconv bias shape", lambda: _mconv(bias=_r(5)), ValueError, "bias"),
    Case("mconv int x", lambda: _mconv(x=torch.ones(1, 3, 5, 5, dtype=torch.int64)), TypeError, "x"),
    Case("mconv float16 on cpu", lambda: _mconv(x=_r(1, 3, 5, 5, dtype=torch.float16),
                                                weight=_r(6, 3, 3, 3, dtype=torch.float16),
                                                bias=_r(6, dtype=torch.float16), backend="cpu"),
         TypeError, "x", needs_cpp=True),
    # masked_linear
    Case("mlin in_features 0", lambda: _mlin(x=_r(2, 0), weight=_r(3, 0), mask=torch.ones(3, 0, dtype=torch.bool)),
         ValueError, "weight"),
    Case("mlin float mask", lambda: _mlin(mask=torch.ones(3, 5)), TypeError, "mask"),
    Case("mlin mask shape", lambda: _mlin(mask=torch.ones(5, 3, dtype=torch.bool)), ValueError, "mask"),
    Case("mlin features mismatch", lambda: _mlin(x=_r(2, 4)), ValueError, "x"),
    # shifted convs
    Case("shifted shift", lambda: _shifted(shift="up"), ValueError, "shift"),
    Case("shifted stride 0", lambda: _shifted(stride=0), ValueError, "stride"),
    Case("shifted transpose shift", lambda: _shifted(True, shift="left"), ValueError, "shift"),
    Case("shifted transpose weight", lambda: _shifted(True, weight=_r(5, 6, 2, 3)), ValueError, "weight"),
    # fused decode ops
    Case("wavenet noise NaN", lambda: _wavenet(noise=_nan_noise((1, 5), float("nan"))), ValueError, "noise"),
    Case("wavenet noise 1.0", lambda: _wavenet(noise=_nan_noise((1, 5), 1.0)), ValueError, "noise"),
    Case("wavenet noise float32", lambda: _wavenet(noise=torch.rand(1, 5)), TypeError, "noise"),
    Case("wavenet noise on meta", lambda: _wavenet(noise=torch.rand(1, 5, dtype=F64, device="meta")),
         ValueError, "noise"),
    Case("wavenet temperature inf", lambda: _wavenet(temperature=float("inf")), ValueError, "temperature"),
    Case("wavenet temperature denormal", lambda: _wavenet(temperature=5e-324), ValueError, "temperature"),
    Case("wavenet top_p 0", lambda: _wavenet(top_p=0.0), ValueError, "top_p"),
    Case("wavenet prev out of range", lambda: _wavenet(prev=torch.full((1, 2), 8, dtype=torch.int64)),
         ValueError, "prev"),
    Case("pixelcnn noise -0.5", lambda: _pixelcnn(noise=_nan_noise((1, 1, 4, 4), -0.5)), ValueError, "noise"),
    Case("pixelcnn noise inf", lambda: _pixelcnn(noise=_nan_noise((1, 1, 4, 4), float("inf"))), ValueError,
         "noise"),
    Case("pixelcnn noise on meta", lambda: _pixelcnn(noise=torch.rand(1, 1, 4, 4, dtype=F64, device="meta")),
         ValueError, "noise"),
    Case("pixelcnn temperature 0", lambda: _pixelcnn(temperature=0.0), ValueError, "temperature"),
    Case("pixelcnn forced out of range", lambda: _pixelcnn(forced=torch.full((1, 1, 4, 4), 4)), ValueError,
         "forced"),
    Case("pixelcnn rows", lambda: _pixelcnn(row_begin=3, row_end=2), ValueError, "rows"),
    Case("pixelcnn++ noise NaN", lambda: _pixelcnnpp(noise=_nan_noise((1, 2, 4, 4), float("nan"))), ValueError,
         "noise"),
    Case("pixelcnn++ noise shape", lambda: _pixelcnnpp(noise=torch.rand(1, 1, 4, 4, dtype=F64)), ValueError,
         "noise"),
    Case("pixelcnn++ temperature inf", lambda: _pixelcnnpp(temperature=float("inf")), ValueError, "temperature"),
    # compat (Dao-AILab causal_conv1d interface)
    Case("compat int64 x", lambda: compat.causal_conv1d_fn(torch.arange(8).view(1, 1, 8), _r(1, 3)), TypeError,
         "x"),
    Case("compat int final_states_out",
         lambda: compat.causal_conv1d_fn(_r(1, 1, 8), _r(1, 3), return_final_states=True, final_states_out=3),
         TypeError, "final_states_out"),
    Case("compat weight shape", lambda: compat.causal_conv1d_fn(_r(1, 2, 8), _r(3, 3)), ValueError, "weight"),
    Case("compat activation", lambda: compat.causal_conv1d_fn(_r(1, 1, 8), _r(1, 3), activation="relu"),
         ValueError, "activation"),
    Case("compat update int x", lambda: compat.causal_conv1d_update(torch.ones(1, 1, dtype=torch.int64),
                                                                    torch.zeros(1, 1, 2), _r(1, 3)),
         TypeError, "x"),
]

# ------------------------------------------------------------------------- generate, load, CLI


@cache
def _model(name: str) -> torch.nn.Module:
    return arkern.load(name)


def _gen(name: str = "digits", **kw: object) -> object:
    args = dict(shape=(4, 4), condition=1, progress=False) if name == "digits" else dict(length=6, progress=False)
    args.update(kw)
    return generate(_model(name), 2, **args)


def _digits_noise(value: float, device: str = "cpu") -> torch.Tensor:
    noise = torch.rand(2, 1, 4, 4, dtype=F64)
    noise[1, 0, 3, 3] = value
    return noise.to(device)


@cache
def _folder() -> Path:
    """A scratch copy of the bundled tones checkpoint, plus the broken variants the load cases read."""
    d = Path(tempfile.mkdtemp(prefix="arkern-bad-input-"))
    for suffix in (".json", ".safetensors"):
        shutil.copy(HERE / f"tones{suffix}", d / f"tones{suffix}")
    (d / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    raw = (d / "tones.safetensors").read_bytes()
    (d / "cut.safetensors").write_bytes(raw[: len(raw) // 2])
    (d / "cut.json").write_text((d / "tones.json").read_text().replace("tones.safetensors", "cut.safetensors"))
    (d / "regular").write_text("a file, not a folder")
    (d / "x.png").mkdir()
    return d


def _tones_variant(name: str, edit: Callable[[dict], None]) -> str:
    config = json.loads((_folder() / "tones.json").read_text())
    edit(config)
    path = _folder() / f"{name}.json"
    path.write_text(json.dumps(config))
    return str(path)


class CliExit(Exception):
    """`arkern ...` exited with code 2; the message is what it printed to stderr."""


def _cli(*argv: str) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli_main(list(argv))
        except SystemExit as e:
            code = e.code
    if code == 2:
        raise CliExit(err.getvalue())
    raise AssertionError(f"arkern {' '.join(argv)} exited with {code}, not 2: {err.getvalue()}")


APPS = [
    # generate
    Case("generate noise NaN", lambda: _gen(noise=_digits_noise(float("nan"))), ValueError, "noise"),
    Case("generate noise inf (fused)", lambda: _gen(noise=_digits_noise(float("inf")), method="fused"), ValueError,
         "noise"),
    Case("generate noise < 0 (cached)", lambda: _gen(noise=_digits_noise(-0.25), method="cached"), ValueError,
         "noise"),
    Case("generate noise 1.0", lambda: _gen(noise=_digits_noise(1.0)), ValueError, "noise"),
    Case("generate noise on meta (fused)", lambda: _gen(noise=_digits_noise(0.5, "meta"), method="fused"),
         ValueError, "noise"),
    Case("generate noise float32", lambda: _gen(noise=_digits_noise(0.5).float()), TypeError, "noise"),
    Case("generate noise shape", lambda: _gen(noise=torch.rand(2, 1, 4, 5, dtype=F64)), ValueError, "noise"),
    Case("generate temperature inf", lambda: _gen(temperature=float("inf")), ValueError, "temperature"),
    Case("generate temperature denormal", lambda: _gen(temperature=5e-324), ValueError, "temperature"),
    Case("generate seed 2**64", lambda: _gen(seed=2**64), ValueError, "seed"),
    Case("generate seed and generator", lambda: _gen(seed=1, generator=torch.Generator()), ValueError, "seed"),
    Case("generate shape 2**40 squared", lambda: _gen(shape=(2**40, 2**40)), ValueError, "shape"),
    Case("generate batch_size 0", lambda: generate(_model("digits"), 0, shape=(4, 4)), ValueError, "batch_size"),
    Case("generate method", lambda: _gen(method="fast"), ValueError, "method"),
    Case("generate length for an image model", lambda: _gen(shape=None, length=5), ValueError, "length"),
    Case("generate label out of range", lambda: _gen(condition=10), ValueError, "condition"),
    Case("generate chunk_size 2.5", lambda: _gen("tones", chunk_size=2.5), TypeError, "chunk_size"),
    Case("generate forced out of range (cached)",
         lambda: _gen("tones", method="cached", forced=torch.full((2, 6), 256)), ValueError, "forced"),
    Case("generate forced out of range (naive)",
         lambda: _gen("tones", method="naive", forced=torch.full((2, 6), -1)), ValueError, "forced"),
    Case("generate length 10**12", lambda: _gen("tones", length=10**12), ValueError, "length"),
    # load
    Case("load 100,000 layers", lambda: arkern.load(_tones_variant("layers", lambda c: c["kwargs"].update(
        num_layers=100_000))), ValueError, "kwargs"),
    Case("load 10**9 channels", lambda: arkern.load(_tones_variant("wide", lambda c: c["kwargs"].update(
        residual_channels=10**9))), ValueError, "kwargs"),
    Case("load sha256 int", lambda: arkern.load(_tones_variant("sha", lambda c: c["weights"].update(sha256=7))),
         ValueError, "sha256"),
    Case("load weights absolute", lambda: arkern.load(_tones_variant("abs", lambda c: c["weights"].update(
        file=str(HERE / "tones.safetensors")))), ValueError, "file"),
    Case("load weights ../", lambda: arkern.load(_tones_variant("up", lambda c: c["weights"].update(
        file="../tones.safetensors"))), ValueError, "file"),
    Case("load 100k-deep JSON", lambda: arkern.load(_folder() / "deep.json"), ValueError, "deep.json"),
    Case("load truncated weights", lambda: arkern.load(_folder() / "cut.json"), ValueError, "cut.safetensors"),
    Case("load device meta", lambda: arkern.load("tones", device="meta"), ValueError, "device"),
    Case("load device nonsense", lambda: arkern.load("tones", device="gpu7"), ValueError, "device"),
    Case("load unknown model type", lambda: arkern.load(_tones_variant("type", lambda c: c.update(model="GPT"))),
         ValueError, "model"),
    Case("load no such model", lambda: arkern.load("no-such-model"), FileNotFoundError, "no-such-model"),
    # CLI: exit 2 with a message, before any sampling
    Case("cli --out /proc", lambda: _cli("sample", "digits", "--n", "1", "--out", "/proc/x.png"), CliExit,
         "--out"),
    Case("cli --out under a regular file",
         lambda: _cli("sample", "digits", "--n", "1", "--out", str(_folder() / "regular" / "x.png")), CliExit,
         "--out"),
    Case("cli --out a directory", lambda: _cli("sample", "digits", "--n", "1", "--out", str(_folder() / "x.png")),
         CliExit, "--out"),
    Case("cli --seed 2**70", lambda: _cli("sample", "digits", "--seed", str(2**70)), CliExit, "--seed"),
    Case("cli --seconds 1e12", lambda: _cli("sample", "tones", "--seconds", "1e12"), CliExit, "--n/--seconds"),
    Case("cli --n 10**9", lambda: _cli("sample", "digits", "--n", str(10**9)), CliExit, "--n/--shape"),
    Case("cli --n 10**6 grid", lambda: _cli("sample", "digits", "--n", str(10**6), "--scale", "16"), CliExit,
         "--n/--shape/--scale"),
    Case("cli --temperature inf", lambda: _cli("sample", "digits", "--temperature", "inf"), CliExit,
         "--temperature"),
    Case("cli --shape 0", lambda: _cli("sample", "digits", "--shape", "0", "4"), CliExit, "--shape"),
    Case("cli unknown model", lambda: _cli("sample", "no-such-model"), CliExit, "MODEL"),
]

CASES = OPS + APPS


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case) -> None:
    if case.needs_cpp and not HAS_CPP:
        pytest.skip("the compiled extension is not loaded")
    with pytest.raises(case.exc) as info:
        case.call()
    message = str(info.value)
    assert re.search(rf"(?<![\w-]){re.escape(case.names)}(?![\w-])", message), (
        f"{case.id}: the message does not name {case.names!r}: {message}")


def test_table_ids_are_unique() -> None:
    assert len({c.id for c in CASES}) == len(CASES)
