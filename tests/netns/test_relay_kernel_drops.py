"""Issue 13 (3): what the kernel drops before the relay can read it is in the relay's counters: datagrams
that found its UDP socket's receive buffer full (``kernel_socket``) and packets that found its TUN's queue
full (``kernel_device``)."""

from __future__ import annotations

import signal
import socket

import pytest
from relay_helpers import NetLab, netlab, ns_socket, ping, two_nodes, wait_until  # noqa: F401

pytestmark = pytest.mark.netns

PORT = 47600


@pytest.mark.parametrize("datapath", ["simple", "auto"])
def test_kernel_drops_appear_in_the_counters(netlab: NetLab, datapath: str) -> None:
    a, b = two_nodes(netlab)
    dev = netlab.ifname("t")
    ra = netlab.relay(a, "ra", "--dev", dev, "--addr", "10.77.0.1/24", "--listen", f"10.1.0.1:{PORT}",
                      "--peer", f"b=10.1.0.2:{PORT}", "--datapath", datapath)
    rb = netlab.relay(b, "rb", "--dev", dev, "--addr", "10.77.0.2/24", "--listen", f"10.1.0.2:{PORT}",
                      "--peer", f"a=10.1.0.1:{PORT}", "--datapath", datapath)
    ping(a, "10.77.0.2")
    # (a TUN may drop a packet or two of its own before its relay reads it: compare with before)
    sock_before, dev_before = rb.drops("kernel_socket"), ra.drops("kernel_device")
    # b's relay stops reading: datagrams pile up in its socket until the kernel drops them
    rb.proc.send_signal(signal.SIGSTOP)
    # a's relay stops reading too: packets for its TUN pile up in the device's queue
    ra.proc.send_signal(signal.SIGSTOP)
    try:
        flood = ns_socket(a, socket.AF_INET, socket.SOCK_DGRAM)
        payload = bytes(1200)
        for _ in range(20000):
            flood.sendto(payload, ("10.1.0.2", PORT))      # straight at b's relay socket
            flood.sendto(payload, ("10.77.0.2", 9))        # into a's TUN, toward its relay
        flood.close()
    finally:
        rb.proc.send_signal(signal.SIGCONT)
        ra.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: rb.drops("kernel_socket") > sock_before + 100, "b's relay reporting its socket's drops")
    wait_until(lambda: ra.drops("kernel_device") > dev_before + 100, "a's relay reporting its device queue's drops")
    ping(a, "10.77.0.2")
