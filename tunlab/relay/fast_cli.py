"""Stand-alone entry point of the fast relay: ``python -m tunlab.relay.fast_cli``.

The same native options as ``tunlab relay`` (docs/ARCHITECTURE.md) for the subset the fast relay
uses, plus ``--datapath``. Used by the benchmark and the netns tests until ``tunlab relay``
carries ``--datapath``.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from typing import Any

from tunlab.errors import TunlabError
from tunlab.relay.fast import DATAPATHS, FastConfig, FastRelay


def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected IP:PORT")
    return host.strip("[]"), int(port)


def _named(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE")
    return name, value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tunlab-fast-relay", description=__doc__)
    p.add_argument("--dev", default="tun0")
    p.add_argument("--addr")
    p.add_argument("--mtu", type=int, default=1472)
    p.add_argument("--tap", action="store_true")
    p.add_argument("--attach", action="store_true")
    p.add_argument("--listen", type=_hostport, required=True)
    p.add_argument("--peer", type=_named, action="append", default=[])
    p.add_argument("--accept", type=_named, action="append", default=[])
    p.add_argument("--route", type=_named, action="append", default=[])
    p.add_argument("--datapath", choices=DATAPATHS, default="auto")
    p.add_argument("--segment", type=int)
    p.add_argument("--threads", action="store_true", help="one thread per direction")
    p.add_argument("--ready-fd", type=int)
    p.add_argument("--stats-file")
    p.add_argument("--log-level", default="warning")
    return p


def config_from_args(args: argparse.Namespace) -> FastConfig:
    return FastConfig(dev=args.dev, listen=args.listen, addr=args.addr, mtu=args.mtu, tap=args.tap,
                      attach=args.attach, peers={n: _hostport(v) for n, v in args.peer},
                      accepts=dict(args.accept), routes=[(p, n) for p, n in args.route],
                      datapath=args.datapath, segment=args.segment, threads=args.threads)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        relay = FastRelay(config_from_args(args), ready_fd=args.ready_fd)
    except TunlabError as exc:
        print(f"tunlab: {exc}", file=sys.stderr)
        return exc.exit_code

    def write_stats(*_: Any) -> None:
        if args.stats_file:
            with open(args.stats_file, "w") as f:
                json.dump(relay.counters(), f)

    signal.signal(signal.SIGTERM, lambda *_: relay.stop())
    signal.signal(signal.SIGINT, lambda *_: relay.stop())
    signal.signal(signal.SIGUSR1, write_stats)
    try:
        relay.run()
    except TunlabError as exc:
        print(f"tunlab: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        write_stats()
    return 0


if __name__ == "__main__":
    sys.exit(main())
