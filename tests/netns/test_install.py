"""tunlab used as a new user would, outside its clone: a wheel in a fresh venv, the README's "Install into your
own project" steps as written, and the launcher setup installs so that `sudo tunlab` works (root: the
scenarios really run). Slow (fresh venvs, pip from its cache or index): about a minute each."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
PIP_QUIET = ["--disable-pip-version-check", "--no-input", "-q"]


def sh(argv: list[str], *, cwd: Path, env: dict[str, str] | None = None,
       timeout: float = 900) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "COLUMNS": "150", **(env or {})})
    assert res.returncode == 0, f"{' '.join(argv)} -> {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    sh([sys.executable, "-m", "pip", "wheel", *PIP_QUIET, "--no-deps", "-w", str(out), str(ROOT)], cwd=out)
    (whl,) = out.glob("tunlab-*.whl")
    return whl


def test_the_wheel_carries_topologies_scenarios_and_licence(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    for shipped in ("tunlab/topologies/three_vnf.py", "tunlab/scenarios/three_vnf.py", "tunlab/py.typed",
                    "tunlab/wireshark/tunlab.lua"):
        assert shipped in names, shipped
    assert any(n.endswith(".dist-info/LICENSE") or "/licenses/LICENSE" in n for n in names), names
    meta = next(zipfile.ZipFile(wheel).read(n) for n in names if n.endswith(".dist-info/METADATA")).decode()
    assert "GPL-2.0-or-later" in meta


def test_wheel_in_a_fresh_venv_works_outside_the_clone(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    sh([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    sh([str(venv / "bin" / "pip"), "install", *PIP_QUIET, str(wheel)], cwd=tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    tunlab = str(venv / "bin" / "tunlab")
    where = sh([str(venv / "bin" / "python"), "-c", "import tunlab; print(tunlab.__file__)"], cwd=work).stdout
    assert where.startswith(str(venv)) and not where.startswith(str(ROOT))  # not the clone's copy
    show = json.loads(sh([tunlab, "show", "three_vnf", "--json"], cwd=work).stdout)
    assert show["name"] == "three_vnf" and show["source"].startswith(str(venv))
    assert "three_vnf" in sh([tunlab, "show", "--help"], cwd=work).stdout
    run = sh([tunlab, "run", "--json", "three_vnf"], cwd=work, timeout=300)
    data = json.loads(run.stdout)
    assert data["passed"] and data["scenarios"][0]["source"].startswith(str(venv))


def readme_install_steps() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- tunlab:install-project -->\n```sh\n(.*?)```\n<!-- /tunlab:install-project -->", text, re.S)
    assert block, "README has no tunlab:install-project block"
    return block.group(1)


def test_readme_install_into_your_project_steps_work_as_written(tmp_path: Path) -> None:
    steps = readme_install_steps().replace("/path/to/tunlab", str(ROOT))
    steps = re.sub(r"^sudo ", "", steps, flags=re.M)  # we are root already (as .ci/run does)
    script = tmp_path / "steps.sh"
    script.write_text("set -euo pipefail\n" + steps)
    project = tmp_path / "myproject"
    project.mkdir()
    res = sh(["bash", str(script)], cwd=project, env={"PIP_DISABLE_PIP_VERSION_CHECK": "1"}, timeout=1500)
    out = res.stdout
    assert "PASS three_vnf" in out and "seed " in out
    assert re.search(r"^1 passed", out, re.M), out[-2000:]
    assert (project / ".venv" / "mininet-link" / "mininet").is_symlink()


def test_setup_launcher_makes_tunlab_work_with_sudos_path(tmp_path: Path) -> None:
    launcher = tmp_path / "bin" / "tunlab"
    sh(["bash", str(ROOT / "scripts" / "setup.sh")], cwd=ROOT, env={"TUNLAB_LAUNCHER": str(launcher)})
    assert launcher.stat().st_uid == 0 and launcher.stat().st_mode & 0o777 == 0o755
    # sudo resets PATH to its secure_path: only the launcher's folder and the system's
    env = {"PATH": f"{launcher.parent}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path), "COLUMNS": "150"}
    res = subprocess.run(["env", "-i", *(f"{k}={v}" for k, v in env.items()), "tunlab", "show", "three_vnf"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "vnf2" in res.stdout, res.stderr
    # another clone's launcher whose venv works (another user's, on a shared machine) is not taken over
    clone = tmp_path / "other-clone"
    (clone / ".venv" / "bin").mkdir(parents=True)
    (clone / ".venv" / "bin" / "tunlab").write_text("#!/bin/sh\necho other clone\n")
    (clone / ".venv" / "bin" / "tunlab").chmod(0o755)
    theirs = launcher.read_text().replace(str(ROOT), str(clone))
    launcher.write_text(theirs)
    res = sh(["bash", str(ROOT / "scripts" / "setup.sh")], cwd=ROOT, env={"TUNLAB_LAUNCHER": str(launcher)})
    assert "(another clone): left alone" in res.stdout and launcher.read_text() == theirs
    sh(["bash", str(ROOT / "scripts" / "setup.sh")], cwd=ROOT,
       env={"TUNLAB_LAUNCHER": str(launcher), "TUNLAB_LAUNCHER_TAKEOVER": "1"})
    assert str(ROOT) in launcher.read_text() and str(clone) not in launcher.read_text()
    other = tmp_path / "bin" / "not-ours"
    other.write_text("#!/bin/sh\necho mine\n")
    res = sh(["bash", str(ROOT / "scripts" / "setup.sh")], cwd=ROOT, env={"TUNLAB_LAUNCHER": str(other)})
    assert "is not tunlab's launcher: left alone" in res.stdout and other.read_text() == "#!/bin/sh\necho mine\n"
