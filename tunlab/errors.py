"""Errors that reach users as one line (plus an optional hint), never as a traceback."""

from __future__ import annotations

import sys
from enum import IntEnum
from typing import Any, NoReturn


class ExitCode(IntEnum):
    """The exit codes of every ``tunlab`` command (documented in the README, "Exit codes")."""

    OK = 0              # done; for `tunlab run`: every check passed
    CHECKS_FAILED = 1   # `tunlab run`: a check failed or a scenario's lab did not come up
    USAGE = 2           # bad arguments, a bad topology/scenario file, or a request that cannot be met
    CANNOT_RUN = 3      # this machine or user cannot do it: not root, no namespaces, a missing tool
    INTERNAL = 4        # a bug in tunlab (an unexpected exception; the traceback is printed)


class TunlabError(Exception):
    """An error with a message a person can act on.

    ``hint`` says how to fix it, when there is something to say.
    """

    exit_code = ExitCode.USAGE

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class CannotRunHere(TunlabError):
    """This machine or user cannot do it (not root, no network namespaces, a missing tool)."""

    exit_code = ExitCode.CANNOT_RUN


class NeedRoot(CannotRunHere):
    """Raised when an action needs root (CAP_NET_ADMIN) and the process does not have it."""


class DescriptionError(TunlabError):
    """A topology or scenario description is wrong; the message names the file, the field and the fix."""

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None,
                 hint: str | None = None) -> None:
        where = ", ".join(p for p in (source, field) if p)
        super().__init__(f"{where}: {message}" if where else message, hint)
        self.source = source
        self.field = field


def run_command(command: Any, argv: list[str] | None, prog_name: str) -> NoReturn:
    """Run a click command the way every tunlab entry point does: a :class:`TunlabError` becomes one line
    ``tunlab: ...`` on stderr and its exit code, never a traceback; Ctrl-C exits 130; any other exception is
    a bug: its traceback, then one line saying so, and exit code 4 (:class:`ExitCode`).

    Used by the ``tunlab`` command and by the relay's own entry (:func:`tunlab.relay.command.main`)."""
    import click

    try:
        rv = command.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except TunlabError as exc:
        click.echo(f"tunlab: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("tunlab: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # a bug: keep the traceback for the report, but end on one readable line
        import traceback

        traceback.print_exc()
        click.echo(f"tunlab: internal error: {type(exc).__name__}: {exc} (a bug in tunlab: please report it "
                   "with the traceback above)", err=True)
        sys.exit(ExitCode.INTERNAL)
    sys.exit(rv if isinstance(rv, int) else 0)
