"""The verdict: what the captures say about each probe and each link.

- :mod:`.masks`: ``Mask`` (PTF-style expected packets with don't-care fields; checksums valid rather than
  equal) and the decoders used in failure output;
- :mod:`.checks`: per-hop checks of a probe along its chain, per-link encapsulation checks
  (``check_flow``, ``check_links``, ``ScenarioResult``);
- :mod:`.report`: the rich per-hop table, plain text, JUnit XML.

Pure over captured frames: no lab, no root. Scapy is imported where packets are decoded.
"""
