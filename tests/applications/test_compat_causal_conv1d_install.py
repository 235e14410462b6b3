"""arkern.compat.causal_conv1d.install(): `import causal_conv1d` resolves to arkern only when the real package
is absent, and a Mamba-style program runs unchanged on it. Every case runs in a subprocess, so the shim
never enters this process's sys.modules."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str, *, extra_path: Path | None = None, module: str | None = None,
            args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    paths = [str(ROOT)] + ([str(extra_path)] if extra_path else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", module, *args] if module else [sys.executable, "-c", textwrap.dedent(code)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module", autouse=True)
def _real_package_absent():
    """These cases model a machine without causal-conv1d; skip if this environment has it (find_spec only
    locates the package, it imports nothing)."""
    if importlib.util.find_spec("causal_conv1d") is not None:
        pytest.skip("the real causal-conv1d package is installed here")


def _fake_package(root: Path) -> Path:
    """A stand-in for an installed causal-conv1d, with a marker arkern does not have."""
    pkg = root / "causal_conv1d"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("REAL = True\n__version__ = '1.6.0'\n"
                                     "def causal_conv1d_fn(*args, **kwargs):\n    return 'real fn'\n"
                                     "def causal_conv1d_update(*args, **kwargs):\n    return 'real update'\n")
    (pkg / "causal_conv1d_varlen.py").write_text("def causal_conv1d_varlen_states(*args, **kwargs):\n"
                                                 "    return 'real varlen'\n")
    return root


def test_install_resolves_to_arkern_when_absent():
    proc = _python("""
        import logging
        logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
        import arkern.compat.causal_conv1d as compat
        from arkern.compat.install import active
        assert active("causal_conv1d") is None
        assert compat.install() == "arkern"
        assert compat.install() == "arkern"  # idempotent
        import causal_conv1d
        from causal_conv1d import causal_conv1d_fn, causal_conv1d_update
        from causal_conv1d.causal_conv1d_interface import causal_conv1d_fn as fn2
        from causal_conv1d.causal_conv1d_varlen import causal_conv1d_varlen_states
        assert causal_conv1d.__arkern_shim__ is True and causal_conv1d.__version__.startswith("1.6.0+arkern")
        assert causal_conv1d_fn is compat.causal_conv1d_fn is fn2
        assert causal_conv1d_update is compat.causal_conv1d_update
        assert causal_conv1d_varlen_states is compat.causal_conv1d_varlen_states
        assert active("causal_conv1d") == "arkern"
        from arkern.compat.install import uninstall_shim
        uninstall_shim("causal_conv1d")
        try:
            import causal_conv1d  # noqa: F811
        except ImportError:
            print("uninstalled")
        """)
    assert "uninstalled" in proc.stdout
    assert "arkern INFO arkern: `import causal_conv1d` resolves to arkern (package not installed)" in proc.stderr


def test_without_install_nothing_changes():
    proc = _python("""
        import arkern.compat.causal_conv1d  # importing the compat module alone installs nothing
        try:
            import causal_conv1d
        except ImportError:
            print("absent")
        """)
    assert proc.stdout.strip() == "absent"


def test_never_shadows_an_installed_package(tmp_path):
    proc = _python("""
        import logging
        logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
        from arkern.compat.causal_conv1d import install
        assert install() == "causal_conv1d"
        import causal_conv1d
        from causal_conv1d.causal_conv1d_varlen import causal_conv1d_varlen_states
        assert causal_conv1d.REAL and not hasattr(causal_conv1d, "__arkern_shim__")
        assert causal_conv1d.causal_conv1d_fn() == "real fn" and causal_conv1d_varlen_states() == "real varlen"
        assert install() == "causal_conv1d"  # already imported: still the real one
        print("real")
        """, extra_path=_fake_package(tmp_path))
    assert proc.stdout.strip() == "real"
    assert "resolves to the installed package" in proc.stderr and str(tmp_path) in proc.stderr


def test_package_appearing_after_install_wins(tmp_path):
    """The shim is the last finder on sys.meta_path: a package put on sys.path later is still found first."""
    fake = _fake_package(tmp_path)
    proc = _python(f"""
        import sys
        from arkern.compat.causal_conv1d import install
        assert install() == "arkern"
        sys.path.insert(0, {str(fake)!r})
        import causal_conv1d
        from arkern.compat.install import active
        assert causal_conv1d.REAL and active("causal_conv1d") == "causal_conv1d"
        print("real")
        """)
    assert proc.stdout.strip() == "real"


def test_mamba_style_program_runs_unchanged():
    """Packed prefill (causal_conv1d_fn + causal_conv1d_varlen_states), then token-by-token
    causal_conv1d_update: every output equals a full causal_conv1d_fn over its sequence (checked inside)."""
    dtypes = ("float32", "float64", "bfloat16", "float16")
    proc = _python("", module="tests.applications.causal_conv1d_mamba_program", args=dtypes)
    lines = proc.stdout.strip().splitlines()
    assert [line.split()[1] for line in lines] == [f"dtype={d}" for d in dtypes]
    assert all(line.startswith("provider=arkern") and line.endswith("OK") for line in lines)
