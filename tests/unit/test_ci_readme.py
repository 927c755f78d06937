"""The README's commands, .ci/run, setup.sh and the Vagrant files agree; the Vagrantfile validates."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def marked_block(path: Path, name: str) -> str:
    """The one command inside ``<!-- tunlab:NAME -->`` ... ``<!-- /tunlab:NAME -->`` (in a code fence)."""
    text = path.read_text()
    found = re.findall(rf"<!-- tunlab:{name} -->\n(.*?)<!-- /tunlab:{name} -->", text, re.S)
    assert len(found) == 1, f"{path.name}: expected one block marked tunlab:{name}, found {len(found)}"
    lines = [ln for ln in found[0].strip().splitlines() if not ln.startswith("```")]
    assert len(lines) == 1, f"{path.name}: block tunlab:{name} must hold exactly one command line: {lines}"
    return lines[0].strip()


def bash_array(path: Path, var: str) -> list[str]:
    """Words of a one-line bash array assignment ``var=(...)`` (may continue on the next lines)."""
    m = re.search(rf"^{var}=\((.*?)\)", path.read_text(), re.S | re.M)
    assert m, f"{path}: no {var}=(...) assignment"
    return shlex.split(m.group(1), comments=True)


def test_ci_runs_the_readme_test_command() -> None:
    readme_cmd = shlex.split(marked_block(README, "test-command"))
    out = subprocess.run(["bash", ".ci/run"], cwd=ROOT, env=dict(os.environ, TUNLAB_CI_DRY_RUN="1"),
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30, check=True)
    expected = readme_cmd[1:] if os.geteuid() == 0 and readme_cmd[0] == "sudo" else readme_cmd
    assert shlex.split(out.stdout) == expected
    # and the command as .ci/run holds it (used as is when not root) is the README's, sudo included
    assert bash_array(ROOT / ".ci/run", "test_cmd") == readme_cmd


@pytest.mark.parametrize("block,script", [("test-command", "scripts/test.sh"), ("demo-command", "scripts/demo.sh")])
def test_readme_commands_run_the_scripts(block: str, script: str) -> None:
    assert shlex.split(marked_block(README, block)) == ["sudo", "bash", script]
    assert (ROOT / script).is_file()


def test_readme_lists_the_packages_setup_installs() -> None:
    debs = bash_array(ROOT / "scripts/setup.sh", "debs")
    listed = re.search(r"recommends\): (.*?);\n", README.read_text(), re.S)
    assert listed, "README: the package list in 'What setup does' moved; update this test"
    assert [p.strip() for p in listed.group(1).replace("\n", " ").split(",")] == debs


def test_readme_lists_the_packages_setup_installs_for_the_vm() -> None:
    vm_debs = bash_array(ROOT / "scripts/setup.sh", "vm_debs")
    listed = re.search(r"`--vagrant` also installs what [^:]*?\):\s(.*?)\.\n", README.read_text(), re.S)
    assert listed, "README: the --vagrant package list in 'What setup does' moved; update this test"
    assert [p.strip() for p in listed.group(1).replace("\n", " ").split(",")] == vm_debs


def test_setup_prints_the_lab_packages_for_the_box_builder() -> None:
    """vagrant/build-box.sh puts exactly setup.sh's debs into the box (so provisioning needs no apt)."""
    out = subprocess.run(["bash", str(ROOT / "scripts/setup.sh"), "--print-debs"], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=30, check=True).stdout
    assert out.split() == bash_array(ROOT / "scripts/setup.sh", "debs")
    assert "setup.sh --print-debs" in (ROOT / "vagrant/build-box.sh").read_text()


def test_vagrant_docs_and_vagrantfile_agree() -> None:
    cmd = marked_block(README, "vagrant-command")
    assert cmd == marked_block(ROOT / "vagrant/README.md", "vagrant-command")
    vagrantfile = (ROOT / "vagrant/Vagrantfile").read_text()
    guest_dir = re.search(r'^GUEST_DIR = "(.*)"$', vagrantfile, re.M)
    assert guest_dir, "Vagrantfile: GUEST_DIR not found"
    test_cmd = marked_block(README, "test-command")
    assert f"vagrant ssh -c 'cd {guest_dir.group(1)} && {test_cmd}'" in cmd
    assert 'config.vm.box = "tunlab/debian12"' in vagrantfile
    assert 'BOX_NAME="tunlab/debian12"' in (ROOT / "vagrant/build-box.sh").read_text()
    assert re.search(r'provision "shell".*privileged: true.*bash scripts/setup\.sh', vagrantfile, re.S)


@pytest.mark.parametrize("script", ["scripts/setup.sh", "scripts/test.sh", "scripts/demo.sh",
                                    "scripts/common.sh", ".ci/run", "vagrant/build-box.sh", "vagrant/vm.sh",
                                    "vagrant/accel.sh"])
def test_scripts_parse(script: str) -> None:
    subprocess.run(["bash", "-n", str(ROOT / script)], check=True, timeout=30)


def test_scripts_pass_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (Debian package shellcheck)")
    scripts = ["scripts/setup.sh", "scripts/test.sh", "scripts/demo.sh", "scripts/common.sh", ".ci/run",
               "vagrant/build-box.sh", "vagrant/vm.sh", "vagrant/accel.sh"]
    r = subprocess.run([shellcheck, "-x", *scripts], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_scripts_refuse_non_root_in_one_line() -> None:
    cmd = ["bash", str(ROOT / "scripts/test.sh")]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv (util-linux) is missing: cannot drop to a plain user")
        cmd = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    r = subprocess.run(cmd, cwd="/", stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    if os.geteuid() == 0 and "Permission denied" in r.stderr:
        pytest.skip(f"user 65534 cannot read {ROOT}: {r.stderr.strip()}")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("test: error: needs root"), r.stderr
    assert f"'sudo bash {ROOT / 'scripts/test.sh'}'" in lines[0]


def test_scripts_refuse_a_root_that_cannot_make_namespaces() -> None:
    """uid 0 without CAP_SYS_ADMIN, as in an unprivileged container: one line, before any install."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to drop CAP_SYS_ADMIN")
    r = subprocess.run([setpriv, "--inh-caps=-sys_admin", "--bounding-set=-sys_admin", "bash",
                        str(ROOT / "scripts/demo.sh")], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("demo: error: cannot create a network namespace here"), r.stderr


def test_vagrant_validate(tmp_path: Path) -> None:
    vagrant = shutil.which("vagrant")
    if vagrant is None:
        pytest.skip("vagrant is not installed (sudo bash scripts/setup.sh --vagrant installs it)")
    env = dict(os.environ, VAGRANT_CHECKPOINT_DISABLE="1", VAGRANT_DOTFILE_PATH=str(tmp_path / "dot"))
    r = subprocess.run([vagrant, "validate"], cwd=ROOT / "vagrant", env=env, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "validated successfully" in r.stdout
