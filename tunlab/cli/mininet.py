"""``tunlab link-mininet``: make Debian's ``mininet`` module (and only it) importable from the venv tunlab
runs in, the way scripts/setup.sh does for a clone's .venv.

Debian ships Mininet's Python module in ``/usr/lib/python3/dist-packages``; adding that whole folder to a
venv would shadow the venv's own packages with Debian's. Instead a folder in the venv holds a single link
to the ``mininet`` package, and a ``.pth`` file puts that folder on ``sys.path``.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import click

from tunlab.errors import CannotRunHere, TunlabError

LINK_DIR = "mininet-link"          # in the venv (same names as scripts/setup.sh)
PTH_FILE = "tunlab-mininet.pth"    # in the venv's site-packages


def debian_mininet() -> Path | None:
    for d in ["/usr/lib/python3/dist-packages/mininet", *sorted(glob.glob("/usr/local/lib/python3*/dist-packages/mininet"))]:
        if os.path.isfile(os.path.join(d, "__init__.py")):
            return Path(d)
    return None


def link_mininet(prefix: Path, site: Path, src: Path) -> Path:
    """Link ``src`` into ``prefix/mininet-link`` and name that folder in ``site/tunlab-mininet.pth``."""
    link_dir = prefix / LINK_DIR
    link = link_dir / "mininet"
    link_dir.mkdir(exist_ok=True)
    if not (link.is_symlink() and os.readlink(link) == str(src)):
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(src)
    pth = site / PTH_FILE
    if not pth.is_file() or pth.read_text().strip() != str(link_dir):
        pth.write_text(f"{link_dir}\n")
    return pth


@click.command("link-mininet")
def link_mininet_cmd() -> None:
    """Make Debian's mininet module importable from this venv (for --backend mininet); no root needed."""
    if sys.prefix == sys.base_prefix:
        raise TunlabError(f"tunlab runs from {sys.prefix}, which is not a venv: leave it to Debian's Python",
                          "install tunlab into a venv (python3 -m venv .venv), then run this from it")
    src = debian_mininet()
    if src is None:
        raise CannotRunHere("Debian's mininet module was not found in /usr/lib/python3/dist-packages",
                            "install it: sudo apt-get install mininet bridge-utils")
    pth = link_mininet(Path(sys.prefix), Path(sysconfig.get_paths()["purelib"]), src)
    check = subprocess.run([sys.executable, "-c", "import mininet.net"], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        err = (check.stderr.strip().splitlines() or ["no output"])[-1]
        raise TunlabError(f"linked {src} via {pth}, but 'import mininet.net' still fails: {err}")
    click.echo(f"mininet ({src}) is importable from {sys.prefix} (via {pth})")
