"""Issue 19 (4): a lab across stand-in hosts: each host builds its part (its own ledger), links between hosts
are relay hops over the hosts' underlay addresses (keyed, MTU fitted), and everything goes away again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from multihost_helpers import host_leftovers, inventory_of, run_pids, standins
from tunlab.lab.multihost import MultiHostLab
from tunlab.model.hosts import load_inventory
from tunlab.model.topofile import load_topology
from tunlab.testing import standin

pytestmark = [pytest.mark.netns, pytest.mark.multihost]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sset(tmp_path_factory: pytest.TempPathFactory) -> Iterator[standin.StandinSet]:
    with standins(3, tmp_path_factory.mktemp("standin")) as s:
        yield s


def test_three_vnf_over_two_hosts_comes_up_and_goes_away(sset: standin.StandinSet, tmp_path: Path) -> None:
    inv = load_inventory(inventory_of(sset, ["h1", "h2"], tmp_path / "hosts.ini"))
    topo = load_topology("three_vnf", {})
    with MultiHostLab(topo, inv) as lab:
        run_id = lab.run_id
        lab.results_dir = tmp_path / "results"  # as `tunlab run` sets it when it keeps evidence
        assert lab.placement == {"sender": "h1", "vnf1": "h1", "vnf2": "h1", "vnf3": "h2", "receiver": "h2"}
        # one ssh round trip per host per phase: session, hello, up, connect
        assert lab.trips.per_host == {"h1": 4, "h2": 4}
        # each host keeps its own ledger of its part, invisible to the other and to the root
        for h, nodes in (("h1", ["sender", "vnf1", "vnf2"]), ("h2", ["receiver", "vnf3"])):
            out = sset.ssh(h, f"ip netns list; cat /run/tunlab/{run_id}/meta.json").stdout
            assert sorted(n for n in (f"tl-{run_id}-{x}" for x in lab.placement) if n in out) == \
                sorted(f"tl-{run_id}-{x}" for x in nodes)
            assert f'"host": "{h}"' in out
        assert not Path(f"/run/netns/tl-{run_id}-sender").exists()
        # the link between hosts is keyed, and the overlay MTU fits the stand-ins' LAN (its veths' MTU)
        link = sset.ssh("h1", "ip -o link show dev eth0").stdout.split()
        lan_mtu = int(link[link.index("mtu") + 1])
        assert lan_mtu == standin.LAN_MTU  # the host's own device (its /sys shows the machine's namespace)
        assert lab.topology.keyed and lab.topology.mtu == lan_mtu - 28 - 29
        mtu = lab.topology.mtu
        rx = lab.node("receiver").overlay_ip
        # a packet of exactly the MTU crosses whole (DF set); one byte more is refused at the sender
        full = lab.node("sender").cmd_status(["ping", "-c1", "-W3", "-M", "do", "-s", str(mtu - 28), rx])
        assert full.returncode == 0, full.stdout + full.stderr
        over = lab.node("sender").cmd_status(["ping", "-c1", "-W1", "-M", "do", "-s", str(mtu - 27), rx])
        assert over.returncode != 0
        c = lab.relay_counters()
        assert c["vnf2"]["peers"]["vnf3"]["datapath"] == "sealed-gso" and c["vnf2"]["peers"]["vnf3"]["rx_packets"] >= 1
        # on the wire between the hosts: vnf2's host's underlay address and port, sealed datagrams
        assert "10.77.0.1" in " ".join(lab.host_plans["h2"].plan.node("vnf3").relay_args)
    assert host_leftovers(sset, run_id) == {}
    assert run_pids(run_id) == []
    assert not Path(f"/run/tunlab/{run_id}").exists()
    # every host's relay logs, final counters and ledger came back
    kept = tmp_path / "results" / run_id / "hosts"
    assert {p.name for p in (kept / "h2").iterdir()} >= {"ledger.jsonl", "receiver.log", "vnf3.log"}
    assert "ready" in (kept / "h1" / "vnf2.log").read_text()
    assert lab.final_counters["vnf3"]["peers"]["vnf2"]["rx_packets"] >= 1


def test_three_vnf_scenario_passes_the_per_hop_checks_across_two_hosts(sset: standin.StandinSet,
                                                                      tmp_path: Path) -> None:
    from tunlab.model.scenario import load_scenario
    from tunlab.run.runner import check_scenario

    inv = load_inventory(inventory_of(sset, ["h1", "h2"], tmp_path / "hosts.ini"))
    sc = load_scenario(ROOT / "scenarios/three_vnf.py")
    with MultiHostLab(sc.topology, inv) as lab:
        r = check_scenario(sc, lab, seed=1)
        assert r.passed, [(c.name, c.hop, c.message) for c in r.failed]
        assert r.chains == ["sender@h1 > vnf1@h1 > vnf2@h1 > vnf3@h2 > receiver@h2 (udp; kernel VNFs: vnf1, vnf2, vnf3)"]
        assert len(r.flows) == 5 and all(f.passed for f in r.flows)
        assert {c.name for c in r.links} >= {"link vnf2-vnf3"}  # the link between hosts is checked too
        # a drop on h2's VNF is caught, and the failure names the hop's host
        lab.node("vnf3").cmd_raises(["nft", "add table inet t; add chain inet t f { type filter hook forward "
                                     "priority 0; policy drop; }"])
        bad = check_scenario(sc, lab, seed=2)
        assert not bad.passed
        assert any(c.hop and c.hop.startswith("vnf3@h2") for c in bad.failed), [(c.name, c.hop) for c in bad.failed]


def test_ten_vnf_chain_over_three_hosts_with_tunlab_run(sset: standin.StandinSet, tmp_path: Path) -> None:
    scen = tmp_path / "ten.py"
    scen.write_text('from tunlab import Ping, Udp, Tcp\ntopology = "linear"\nparams = {"n_vnfs": 10}\n'
                    'traffic = [Ping(), Ping(size="mtu"), Udp(5000, size=300), Tcp(80)]\n')
    res = subprocess.run([sys.executable, "-m", "tunlab", "run", str(scen), "--hosts", str(sset.inventory),
                          "--results", str(tmp_path / "results"), "--json"],
                         capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    out = json.loads(res.stdout)
    (sc,) = out["scenarios"]
    assert sc["passed"] and sc["chains"][0].startswith("sender@h1 > vnf1@h1 > vnf2@h1 > vnf3@h1 > vnf4@h2")
    assert "vnf10@h3 > receiver@h3" in sc["chains"][0]
    run_id = sc["run_id"]
    assert host_leftovers(sset, run_id) == {} and run_pids(run_id) == []


def test_controller_killed_then_clean_leaves_nothing(sset: standin.StandinSet, tmp_path: Path) -> None:
    inv = inventory_of(sset, ["h1", "h2", "h3"], tmp_path / "hosts.ini")
    script = tmp_path / "controller.py"
    script.write_text(
        "import sys, time\nfrom tunlab.lab.multihost import MultiHostLab\nfrom tunlab.model.hosts import load_inventory\n"
        "from tunlab.model.topology import linear_chain\n"
        f"lab = MultiHostLab(linear_chain(4), load_inventory({str(inv)!r})).__enter__()\n"
        "print(lab.run_id, flush=True)\ntime.sleep(600)\n")
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        run_id = p.stdout.readline().strip()  # type: ignore[union-attr]
        assert len(run_id) == 4, run_id
        assert set(host_leftovers(sset, run_id)) == {"h1", "h2", "h3"}
    finally:
        p.kill()
        p.wait()
        p.stdout.close()  # type: ignore[union-attr]
    # every host's part outlives the controller (its relays still run) ...
    assert run_pids(run_id)
    # ... `tunlab clean` on one host removes that host's part (its agent, the owner, is gone: the run is dead)
    tl = f"{sys.executable} -m tunlab"
    res = sset.ssh("h2", f"cd {ROOT} && {tl} clean {run_id}")
    assert res.returncode == 0 and f"run {run_id}: removed" in res.stdout, res.stdout + res.stderr
    assert set(host_leftovers(sset, run_id)) == {"h1", "h3"}
    # ... and `tunlab clean` on the controller asks every host for the rest
    res = subprocess.run([sys.executable, "-m", "tunlab", "clean", run_id], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert host_leftovers(sset, run_id) == {}
    assert run_pids(run_id) == []
    assert not Path(f"/run/tunlab/{run_id}").exists()


def test_up_and_down_from_the_controller(sset: standin.StandinSet, tmp_path: Path) -> None:
    inv = inventory_of(sset, ["h1", "h2"], tmp_path / "hosts.ini")
    res = subprocess.run([sys.executable, "-m", "tunlab", "up", "linear", "-p", "n_vnfs=2", "--hosts", str(inv)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, "COLUMNS": "300"})
    assert res.returncode == 0, res.stderr
    run_id = res.stdout.split()[1]
    try:
        assert "is up on 2 host(s)" in res.stdout and "h1: sender vnf1, h2: receiver vnf2" in res.stdout
        assert set(host_leftovers(sset, run_id)) == {"h1", "h2"} and run_pids(run_id)
    finally:
        res = subprocess.run([sys.executable, "-m", "tunlab", "down", run_id], capture_output=True, text=True,
                             timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert f"run {run_id}: removed 2 recorded object(s)" in res.stdout
    assert host_leftovers(sset, run_id) == {} and run_pids(run_id) == []


def test_tcp_chain_across_two_hosts(sset: standin.StandinSet, tmp_path: Path) -> None:
    inv = inventory_of(sset, ["h1", "h2"], tmp_path / "hosts.ini")
    res = subprocess.run([sys.executable, "-m", "tunlab", "run", "tcp_chain", "--hosts", str(inv), "--json",
                          "--results", str(tmp_path / "results")], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    (sc,) = json.loads(res.stdout)["scenarios"]
    assert sc["passed"] and "vnf3@h2" in sc["chains"][0] and "(tcp" in sc["chains"][0]


@pytest.mark.parametrize("blocked", ["icmp", "tcp", "udp"])
def test_an_underlay_that_does_not_reach_is_named(sset: standin.StandinSet, tmp_path: Path, blocked: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """ICMP dropped: the hello phase's ping between hosts fails; TCP or UDP to the hosts' relay ports dropped:
    the connect phase fails and names the underlay path."""
    from tunlab.errors import TunlabError
    from tunlab.model.topology import linear_chain

    inv = load_inventory(inventory_of(sset, ["h1", "h2"], tmp_path / "hosts.ini"))
    match = "ip protocol icmp" if blocked == "icmp" else f"{blocked} dport 30000-50000"
    rule = (f"nft add table ip blk && nft add chain ip blk pre '{{ type filter hook prerouting priority -300; }}' "
            f"&& nft add rule ip blk pre iifname eth0 {match} drop")
    assert sset.ssh("h2", rule).returncode == 0
    try:
        with pytest.raises(TunlabError) as e:
            # 6 s: time for the far side's hellos (one a second while it has no session) to be seen arriving,
            # so only the blocked direction is named (3 s was too short on a loaded machine)
            MultiHostLab(linear_chain(2, "tcp" if blocked == "tcp" else "udp"), inv, ready_timeout=6).__enter__()
    finally:
        assert sset.ssh("h2", "nft delete table ip blk").returncode == 0
    msg = e.value.message
    assert "\n" not in msg
    if blocked == "icmp":
        assert msg.endswith("host h1: cannot reach host h2's underlay 10.77.0.2 (ping)"), msg
    elif blocked == "udp":  # keyed relays' hellos from h1 never arrive at h2's port for the link
        assert "host h2: node vnf2: nothing from host h1 (10.77.0.1) arrived at 10.77.0.2:" in msg, msg
        assert "for link vnf1-vnf2 within 6 s (udp)" in msg and "host h1" not in msg.split("(udp)")[1]
        assert "[here: forwarding 1, eth0 rx " in msg and "neighbour 10.77.0.1 " in msg, msg
        assert "conntrack: " in msg and "[relay vnf2: drops none]" in msg, msg
        # a silent link is tried once more on a new run (new ports) before it is reported
        (retry,) = [r.getMessage() for r in caplog.records if "bringing the lab up once more" in r.getMessage()]
        first_run = retry.split()[1].rstrip(":")
        assert first_run != msg.split()[1].rstrip(":") and "nothing from host h1" in retry
        assert host_leftovers(sset, first_run) == {} and run_pids(first_run) == []
    else:
        assert "host h1: node vnf1 got no answer from vnf2 on host h2 over the underlay (10.77.0.1 -> 10.77.0.2)" in msg
        assert "tunlab hosts check" in (e.value.hint or "")
    run_id = msg.split()[1].rstrip(":")
    assert host_leftovers(sset, run_id) == {} and run_pids(run_id) == []


@pytest.mark.parametrize("broken", ["unreachable", "no tunlab", "fails to build"])
def test_a_broken_host_is_one_line_and_nothing_is_left_elsewhere(sset: standin.StandinSet, tmp_path: Path,
                                                                 broken: str) -> None:
    from tunlab.errors import TunlabError
    from tunlab.lab.ledger import list_runs
    from tunlab.model.topology import Vnf, linear_chain

    extra = {"unreachable": {"h2": "ansible_host=nowhere.invalid"}, "no tunlab": {"h2": "tunlab=/nonexistent/tunlab"},
             "fails to build": {}}[broken]
    inv = load_inventory(inventory_of(sset, ["h1", "h2"], tmp_path / "hosts.ini", **extra))
    # "fails to build": h2's VNF has a ruleset nft rejects, so h2's part fails after h1's was made
    vnf = (lambda i, name, ov: Vnf(name, ov, nft="table inet t { nonsense }" if i == 3 else None))
    topo = linear_chain(4, vnf=vnf if broken == "fails to build" else None)
    before = {r.run_id for r in list_runs()}
    with pytest.raises(TunlabError) as e:
        MultiHostLab(topo, inv).__enter__()
    msg = e.value.message
    assert "\n" not in msg and "host h2" in msg and "host h1" not in msg, msg
    expect = {"unreachable": "host h2 (ssh nowhere.invalid): unreachable:",
              "no tunlab": "host h2: tunlab missing (no command '/nonexistent/tunlab')",
              "fails to build": "host h2: lab "}[broken]
    assert expect in msg, msg
    run_id = msg.split()[1].rstrip(":")
    assert host_leftovers(sset, run_id) == {}
    assert run_pids(run_id) == []
    # no ledger of this controller (this process) is left; other labs on the machine may come and go meanwhile
    assert [r.run_id for r in list_runs()
            if r.run_id not in before and (r.meta().get("owner") or {}).get("pid") == os.getpid()] == []


def test_plugin_places_its_labs_across_hosts(sset: standin.StandinSet, pytester: pytest.Pytester) -> None:
    import tunlab.run.runner  # noqa: F401 - imported once here: in-process inner runs drop their imports

    inv = inventory_of(sset, ["h1", "h2"], pytester.path / "hosts.ini")
    pytester.makepyfile(test_mh='''
import pytest
from pathlib import Path
from tunlab import Ping, Udp

pytestmark = pytest.mark.netns

@pytest.mark.tunlab_topology("linear", params={"n_vnfs": 2})
def test_across(tunlab_lab, tunlab_checks):
    (Path(__file__).parent / "run_id").write_text(tunlab_lab.run_id)
    assert set(tunlab_lab.placement.values()) == {"h1", "h2"}
    result = tunlab_checks.flows([Ping(), Udp(5000)])
    assert result.passed and "@h2" in result.chains[0]
''')
    res = pytester.runpytest("-p", "no:hypothesispytest", f"--tunlab-hosts={inv}")
    res.assert_outcomes(passed=1)
    run_id = (pytester.path / "run_id").read_text()
    assert host_leftovers(sset, run_id) == {} and run_pids(run_id) == []
