"""A two-VNF chain whose middle link is lossy and jittery (issue 17): the relays impair vnf1-vnf2 in both
directions with 5 ms +- 2 ms of delay and 10% loss, on any kernel (no netem), seeded so that
`tunlab run --seed N` replays the same packets and the same decisions.

Every probe must be delivered intact unless the decision log of a relay says an impairment dropped it
("dropped by impairment on link vnf1>vnf2 (loss, decision #N)"), and the share of UDP probes dropped must
match the configured 10% (an exact two-sided binomial test at 1% over 40 probes: 0 to 10 dropped).
"""

from tunlab import Ping, Udp, linear_chain

topology = linear_chain(2, impair={"vnf1-vnf2": "delay=5ms jitter=2ms loss=10%"}, name="lossy_chain")
traffic = [
    Udp(5000, count=40, size=200, loss="10%"),
    Ping(count=10, expect="reply or dropped by impairment"),
    Ping(size="mtu", expect="reply or dropped by impairment"),
]
