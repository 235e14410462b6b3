"""`arkern bench --plot`: items/s against batch size, one panel per model and unit, one line per provider and
thread count across instruction-set levels."""

from __future__ import annotations

import pytest

from arkern.bench.harness import Measurement, _line_config, _plot


def _row(case, provider, threads, batch, ips, isa, **params):
    return Measurement("isa", case, provider, threads, 0.1, 1.0, ips, isa, {"batch": batch, **params})


def test_plot_groups_lines_across_levels(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [_row(f"wavenet medium B={b}", p, t, b, 1000.0 * b * (2 if p.startswith("bf16") else 1),
                 "avx512" if p == "fp32" or b < 4 else "amx", model="wavenet medium")
            for b in (1, 4, 16, 64) for p in ("fp32", "bf16@amx") for t in (1, 2)]
    rows += [_row(f"PixelCNN 32x32 B={b}", p, 1, b, 10.0 * b, isa, model="PixelCNN", unit="images")
             for b in (16, 64) for p, isa in (("fp32", "avx512"), ("bf16@amx", "amx"))]
    rows.append(Measurement("masked_conv2d", "3x3 C=64", "cpu", 1, 0.01, 3.0, None, "avx512", {}))
    path = tmp_path / "bench.png"
    panels = _plot(rows, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(panels) == {("isa", "wavenet medium", "samples"), ("isa", "PixelCNN", "images")}
    wavenet = panels[("isa", "wavenet medium", "samples")]
    assert set(wavenet) == {("wavenet medium", p, t) for p in ("fp32", "bf16@amx") for t in (1, 2)}
    amx = sorted(wavenet[("wavenet medium", "bf16@amx", 1)])
    assert [b for b, _, _ in amx] == [1, 4, 16, 64]  # the batch-1 point (avx512) stays on the amx line
    assert [isa for _, _, isa in amx] == ["avx512", "amx", "amx", "amx"]
    assert set(panels[("isa", "PixelCNN", "images")]) == {("PixelCNN 32x32", p, 1) for p in ("fp32", "bf16@amx")}


def test_line_config_drops_only_the_batch_token():
    assert _line_config("wavenet medium B=16", 16) == "wavenet medium"
    assert _line_config("PixelCNN C=64 N=64 32x32 fp32", 64) == "PixelCNN C=64 32x32 fp32"
    assert _line_config("PixelCNN C=64 N=16 32x32", 64) == "PixelCNN C=64 N=16 32x32"


def test_plot_without_anything_to_draw_is_an_error(tmp_path):
    pytest.importorskip("matplotlib")
    with pytest.raises(RuntimeError, match="nothing to plot"):
        _plot([], str(tmp_path / "x.png"))
