"""Traffic: scapy probes sent from inside the lab's namespaces, captures on every link, checks and reports.

Modules: expect (masks), decap (underlay decoding), checks (per-hop checks), capture (sniffers in
namespaces), inject (sending), report (rich output, JUnit XML). Import the submodule you need: each
pulls in scapy layers only as it needs them.
"""
