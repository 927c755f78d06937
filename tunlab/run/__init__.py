"""The run orchestrator: one scenario on one lab, end to end, used by both ``tunlab run`` and the pytest
plugin's ``tunlab_checks`` fixture.

Order (nothing sleeps): lab up -> relays connected -> captures bound -> probes sent -> wait until what
must arrive has arrived and the links are quiet -> verdict -> evidence (one layout, see
:mod:`tunlab.run.runner`).
"""
