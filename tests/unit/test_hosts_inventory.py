"""Issue 19: the hosts inventory (Ansible-style INI) and what `tunlab hosts check` concludes from a host's answers."""

from __future__ import annotations

import pytest

from tunlab.errors import DescriptionError
from tunlab.lab.remote import Remote, RoundTrips, check_script, judge_check
from tunlab.model.hosts import Host, parse_inventory

INV = """
# two hosts
[all:vars]
ssh_config=ssh_config
tunlab=/opt/tunlab/bin/tunlab

[lab]
h1 ansible_host=10.0.0.11 underlay=10.0.0.11
h2 ansible_host=h2.example ansible_user=lab ansible_port=2222 become=true underlay=10.0.0.12 tunlab="python3 -m tunlab"
"""


def test_inventory_fields_and_group_vars() -> None:
    inv = parse_inventory(INV, "/etc/tunlab/hosts.ini")
    h1, h2 = inv.hosts
    assert inv.names == ("h1", "h2")
    assert (h1.target, h1.underlay, h1.user, h1.port, h1.become) == ("10.0.0.11", "10.0.0.11", None, None, False)
    assert h1.ssh_config == "/etc/tunlab/ssh_config" and h1.tunlab == "/opt/tunlab/bin/tunlab"
    assert (h2.target, h2.user, h2.port, h2.become) == ("h2.example", "lab", 2222, True)
    assert h2.tunlab_argv() == ["sudo", "-n", "python3", "-m", "tunlab"]
    argv = Remote(h2, RoundTrips()).ssh_argv(["tunlab", "--version"])
    assert argv[:3] == ["ssh", "-F", "/etc/tunlab/ssh_config"]
    assert argv[-7:] == ["-l", "lab", "-p", "2222", "h2.example", "--", "tunlab --version"]


@pytest.mark.parametrize(("text", "words"), [
    ("[hosts]\nh1 ansible_host=x\n", ["line 2", "host h1", "no 'underlay' field"]),
    ("[hosts]\nh1 underlay=10.0.0.300\n", ["line 2", "field 'underlay'", "not an IP address"]),
    ("[hosts]\nh1 underlay=10.0.0.1 colour=red\n", ["line 2", "unknown field 'colour'"]),
    ("[hosts]\nh1 underlay=10.0.0.1\nh1 underlay=10.0.0.2\n", ["line 3", "listed twice"]),
    ("[hosts]\nh1 underlay=10.0.0.1\nh2 underlay=10.0.0.1\n", ["10.0.0.1 given to more than one host"]),
    ("[hosts]\nh1 underlay=10.0.0.1 become=maybe\n", ["field 'become'"]),
    ("[hosts]\nh1 underlay=10.0.0.1 ansible_port=ssh\n", ["field 'ansible_port'"]),
    ("[hosts\n", ["line 1", "closing ']'"]),
    ("# nothing\n", ["no hosts"]),
])
def test_inventory_errors_name_file_line_and_field(text: str, words: list[str]) -> None:
    with pytest.raises(DescriptionError) as e:
        parse_inventory(text, "hosts.ini")
    msg = e.value.message
    assert msg.startswith("hosts.ini") and "\n" not in msg
    for w in words:
        assert w in msg


H = Host("h1", "h1", "10.0.0.1", tunlab="tunlab")
OTHER = Host("h2", "h2", "10.0.0.2")


def answers(**over: str) -> str:
    facts = {"uid": "0", "time": "1000.0", "tunlab": "tunlab, version 0.1.0", "underlay": "ok"}
    facts.update(over)
    return "\n".join(f"{k} {v}" for k, v in facts.items()) + "\nreach 10.0.0.2 ok\n"


def test_a_ready_host_has_no_problem() -> None:
    assert judge_check(H, answers(), 999.9, 1000.1, [OTHER], "0.1.0") == []


@pytest.mark.parametrize(("over", "extra", "words"), [
    ({"tunlab": "missing"}, "", "tunlab missing (no command 'tunlab')"),
    ({"tunlab": "tunlab, version 0.0.9"}, "", "tunlab 0.0.9 there, 0.1.0 here"),
    ({"uid": "1000"}, "", "not root"),
    ({"time": "1004.5"}, "", "clock 4.5 s ahead of the controller's"),
    ({"time": "990.0"}, "", "clock 10.0 s behind"),
    ({"underlay": "absent"}, "", "underlay 10.0.0.1 is not an address of this host"),
    ({}, "reach 10.0.0.2 no\n", "cannot reach host h2's underlay 10.0.0.2"),
])
def test_each_problem_is_one_line_naming_the_host(over: dict[str, str], extra: str, words: str) -> None:
    out = answers(**over)
    if extra:
        out = out.replace("reach 10.0.0.2 ok\n", extra)
    problems = judge_check(H, out, 999.9, 1000.1, [OTHER], "0.1.0")
    assert len(problems) == 1, problems
    assert problems[0].startswith("host h1: ") and words in problems[0] and "\n" not in problems[0]


def test_sudo_counts_only_when_the_inventory_asks_for_it() -> None:
    become = Host("h1", "h1", "10.0.0.1", become=True)
    assert judge_check(become, answers(uid="1000", sudo="ok"), 999.9, 1000.1, [OTHER], "0.1.0") == []
    assert "sudo -n` fails" in judge_check(become, answers(uid="1000", sudo="no"), 999.9, 1000.1, [OTHER], "0.1.0")[0]


def test_check_script_quotes_what_the_inventory_gives() -> None:
    s = check_script(Host("h1", "h1", "10.0.0.1", tunlab="'/opt/my tunlab/bin/tunlab' -q"), [OTHER])
    assert "command -v '/opt/my tunlab/bin/tunlab' " in s and "$('/opt/my tunlab/bin/tunlab' -q --version" in s and "for ip in 10.0.0.2;" in s
