"""``python -m tunlab.relay.fast_cli [tunlab relay options]``: the relay with the fast datapaths known.

Takes exactly ``tunlab relay``'s command line (parsed by the same click command; ``--datapath``
defaults to ``auto`` here) and runs :class:`~tunlab.relay.fast.FastRelay`, whose counters carry
the ``datapath`` section. The benchmark
and the netns tests use it until ``tunlab relay`` registers ``--datapath auto|plain|gso`` itself.
"""

from __future__ import annotations

import logging
import os
import sys

from tunlab.errors import TunlabError


def main(argv: list[str] | None = None) -> int:
    import click

    from .command import configs_from_params, relay_cmd, summary
    from .engine import serve
    from .fast import FastRelay, register
    from .loop import Loop

    register()
    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--datapath" or a.startswith("--datapath=") for a in args):
        args += ["--datapath", "auto"]  # the default this datapath proposes for `tunlab relay`
    try:
        ctx = relay_cmd.make_context("relay", args)
        with ctx:
            params = dict(ctx.params)
            configs = configs_from_params(ctx, params)
        _logging(params["log_level"], params["log_file"])
        loop = Loop()
        relays = [FastRelay(c, loop=loop) for c in configs]
        final = serve(relays, ready_fd=params["ready_fd"], control=params["control"],
                      stats_file=params["stats_file"])
    except TunlabError as exc:
        print(f"tunlab: {exc}", file=sys.stderr)
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:  # --help
        return exc.exit_code
    print(summary(final, [c.label or c.dev for c in configs]), file=sys.stderr)
    return 0


def _logging(level: str, path: str | None) -> None:
    handler: logging.Handler = logging.FileHandler(path) if path else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s tunlab-relay[{os.getpid()}] %(levelname)s %(message)s"))
    logger = logging.getLogger("tunlab.relay")
    logger.addHandler(handler)
    logger.setLevel(getattr(logging, level.upper()))
    logger.propagate = False


if __name__ == "__main__":
    sys.exit(main())
