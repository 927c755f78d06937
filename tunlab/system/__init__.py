"""The Linux side shared by every layer above the relay: privileges (root, the sudo user's ownership),
entering network namespaces (one implementation: ``setns`` in a thread, sockets opened inside a
namespace) and process identity (pid + start time, so a reused pid is never signalled).

Imports nothing of tunlab but :mod:`tunlab.errors`; nothing here imports pyroute2 or scapy.
"""
