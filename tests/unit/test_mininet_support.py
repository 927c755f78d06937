"""How tunlab reaches Debian's Mininet, and what it says when Mininet is missing (no root needed)."""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import tunlab
from tunlab.lab.backends.mininet import support as mininet_support
from tunlab.lab.backends.mininet.support import INSTALL_HINT, MininetMissing, import_mininet

DIST_PACKAGES = "/usr/lib/python3/dist-packages"
DEBIAN_MININET = Path(DIST_PACKAGES) / "mininet"
# modules that import mininet at import time; everything else in tunlab must not
MININET_ONLY = {"tunlab.lab.backends.mininet.nodes"}


@pytest.mark.skipif(not DEBIAN_MININET.is_dir(), reason="Debian's mininet package is not installed")
def test_venv_reaches_mininet_without_all_of_dist_packages() -> None:
    code = ("import sys, mininet, mininet.net; "
            "print(repr([p for p in sys.path if 'dist-packages' in p])); print(mininet.__file__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    paths, location = proc.stdout.splitlines()
    assert DIST_PACKAGES not in eval(paths)  # noqa: S307 - our own repr of a list of str
    # the module found is Debian's (through the link), not a copy
    assert Path(location).resolve().parent == DEBIAN_MININET.resolve()
    # and dist-packages did not shadow the venv's own packages
    check = subprocess.run([sys.executable, "-c", "import scapy; print(scapy.__file__)"],
                           capture_output=True, text=True, check=True)
    assert sys.prefix in check.stdout


def test_nothing_else_in_tunlab_imports_mininet() -> None:
    names = [m.name for m in pkgutil.walk_packages(tunlab.__path__, "tunlab.")
             if m.name not in MININET_ONLY and not m.name.startswith("tunlab.__main__")]
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except ImportError as exc:\n"
            "        if 'mininet' in str(exc):\n"
            "            raise\n"
            "    except Exception as exc:\n"
            "        if type(exc).__name__ != 'MininetMissing':  # the backend refusing, on a machine without it\n"
            "            raise\n"
            "print(sorted(m for m in sys.modules if m == 'mininet' or m.startswith('mininet.')))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"a tunlab module imported mininet: {proc.stdout}"


def test_missing_mininet_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mininet", None)  # makes 'import mininet' raise ImportError
    with pytest.raises(MininetMissing) as err:
        import_mininet()
    text = str(err.value)
    assert text.startswith("--backend mininet: Mininet is not installed")
    assert "sudo apt-get install mininet" in text and "scripts/setup.sh" in text
    assert "\n" not in text
    assert INSTALL_HINT in err.value.message  # in the message itself: callers may replace the hint


def test_cheap_check_finds_a_missing_module_without_importing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mininet", None)
    with pytest.raises(MininetMissing, match="not importable.*sudo apt-get install mininet"):
        mininet_support.require_mininet(probe_import=False)
    monkeypatch.setattr(mininet_support, "_find_spec", lambda name: object())
    monkeypatch.setattr(mininet_support.shutil, "which", lambda name: None)
    with pytest.raises(MininetMissing, match="'mnexec' helper is not on PATH"):
        mininet_support.require_mininet(probe_import=False)


def test_missing_mnexec_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    if mininet_support.mininet_unavailable_reason() is not None and "module" in str(
            mininet_support.mininet_unavailable_reason()):
        pytest.skip("mininet module not installed")
    monkeypatch.setattr(mininet_support.shutil, "which", lambda name: None)
    with pytest.raises(MininetMissing, match="'mnexec' helper is not on PATH.*apt-get install mininet"):
        import_mininet()


def test_import_mininet_returns_the_package_when_installed() -> None:
    if mininet_support.mininet_unavailable_reason() is not None:
        pytest.skip("mininet not installed")
    module = import_mininet()
    assert module.__name__ == "mininet"
    assert os.path.basename(os.path.dirname(module.__file__ or "")) == "mininet"
