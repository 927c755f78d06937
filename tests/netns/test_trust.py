"""Issue 13 (6, 7): root never writes through a link another local user planted in a results folder,
chown touches only what tunlab made, and run directories, ledgers and control sockets have explicit
modes whatever the umask (root-only unless $TUNLAB_GROUP names a group)."""

from __future__ import annotations

import grp
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tunlab.errors import TunlabError

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534  # "another local user"
SUDO_USER = 65533  # the user who ran sudo


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Path]:
    """A world-writable sticky folder like /tmp, a victim folder with a root-only file, and a link to it
    planted by another user where tunlab will write its results."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    os.chmod(tmp, 0o1777)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "secret").write_text("root only\n")
    os.chmod(victim / "secret", 0o600)
    os.symlink(victim, tmp / "results")
    os.lchown(tmp / "results", NOBODY, NOBODY)
    yield tmp


def untouched(victim: Path) -> None:
    assert sorted(p.name for p in victim.iterdir()) == ["secret"], "something was written into the link's target"
    st = os.stat(victim / "secret")
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600), "the root-only file was given away"


def test_a_planted_link_is_not_followed(shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tunlab.lab.lab import keep_results
    from tunlab.system.privileges import chown_to_invoking_user, make_user_dir, write_user_file

    monkeypatch.setenv("SUDO_UID", str(SUDO_USER))
    monkeypatch.setenv("SUDO_GID", str(SUDO_USER))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "vnf1.log").write_text("a log\n")
    with pytest.raises(TunlabError, match=r"results is a symbolic link owned by uid 65534: tunlab does not follow"):
        make_user_dir(shared / "results" / "abcd")
    with pytest.raises(TunlabError, match="symbolic link"):
        write_user_file(shared / "results" / "report.txt", "x")
    with pytest.raises(TunlabError, match="symbolic link"):
        keep_results(run_dir, shared / "results" / "abcd")
    chown_to_invoking_user(shared / "results")
    untouched(tmp_path / "victim")
    # a folder planted by another user is refused too (they could swap what is inside)
    (shared / "theirs").mkdir()
    os.chown(shared / "theirs", NOBODY, NOBODY)
    with pytest.raises(TunlabError, match="belongs to uid 65534"):
        make_user_dir(shared / "theirs" / "abcd")
    # a link planted inside our own folder is replaced, not followed; chown gives away only what we made
    ours = make_user_dir(shared / "mine" / "abcd")
    assert os.stat(shared / "mine").st_uid == SUDO_USER
    os.symlink(tmp_path / "victim" / "secret", ours / "report.txt")
    write_user_file(ours / "report.txt", "the report\n")
    assert not (ours / "report.txt").is_symlink() and (ours / "report.txt").read_text() == "the report\n"
    assert os.stat(ours / "report.txt").st_uid == SUDO_USER
    os.link(tmp_path / "victim" / "secret", ours / "hardlink")  # root may; chown must not give it away
    os.symlink(tmp_path / "victim", ours / "link")
    chown_to_invoking_user(shared / "mine")
    assert os.stat(tmp_path / "victim" / "secret").st_uid == 0
    (ours / "hardlink").unlink()
    untouched(tmp_path / "victim")


def test_tunlab_run_refuses_a_planted_results_link(shared: Path, tmp_path: Path) -> None:
    from tunlab.lab.ledger import list_runs

    before = {r.run_id for r in list_runs()}
    try:  # --keep: the evidence is written even though the scenario passes
        res = subprocess.run([sys.executable, "-m", "tunlab", "run", str(ROOT / "scenarios" / "three_vnf.py"),
                              "--results", str(shared / "results"), "--keep", "-q"], capture_output=True, text=True,
                             cwd=ROOT, timeout=180,
                             env={**os.environ, "SUDO_UID": str(SUDO_USER), "SUDO_GID": str(SUDO_USER)})
    finally:
        for r in list_runs():
            if r.run_id not in before and r.meta().get("topology") == "three_vnf" and r.state() == "up":
                subprocess.run([sys.executable, "-m", "tunlab", "down", r.run_id], capture_output=True, timeout=60)
    assert res.returncode != 0
    assert "results is a symbolic link owned by" in res.stdout + res.stderr
    untouched(tmp_path / "victim")


def _mode(path: str | Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.parametrize("group", [None, "adm"])
def test_modes_are_explicit_under_umask_000(group: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    from tunlab import Lab, linear_chain

    if group is not None:
        monkeypatch.setenv("TUNLAB_GROUP", group)
    else:
        monkeypatch.delenv("TUNLAB_GROUP", raising=False)
    old = os.umask(0)
    try:
        with Lab(linear_chain(1)) as lab:
            ctl = lab.plan.node("vnf1").control
            modes = {"run dir": _mode(lab.run_dir), "ledger": _mode(lab.ledger.ledger_path),
                     "meta": _mode(lab.ledger.meta_path), "control": _mode(ctl)}
            groups = {os.lstat(lab.run_dir).st_gid, os.lstat(ctl).st_gid}
            assert lab.relay_counters()["vnf1"]["dev"] is not None  # the socket still answers root
    finally:
        os.umask(old)
    if group is None:
        assert modes == {"run dir": 0o700, "ledger": 0o640, "meta": 0o640, "control": 0o600}
    else:
        assert modes == {"run dir": 0o750, "ledger": 0o640, "meta": 0o640, "control": 0o660}
        assert groups == {grp.getgrnam(group).gr_gid}
