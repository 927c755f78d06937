"""The pytest side of tunlab: options, root gating, artefacts, lab fixtures and the scenario collector.

``tunlab/pytest_plugin.py`` (the ``pytest11`` entry point) pulls these modules together; nothing here
imports the lab, scapy or pyroute2 until a test asks for a lab, so the plugin costs nothing to suites that
do not use it.
"""
