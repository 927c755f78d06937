"""Errors that reach users as one line (plus an optional hint), never as a traceback."""

from __future__ import annotations


class TunlabError(Exception):
    """An error with a message a person can act on.

    ``hint`` says how to fix it, when there is something to say.
    """

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class NeedRoot(TunlabError):
    """Raised when an action needs root (CAP_NET_ADMIN) and the process does not have it."""

    exit_code = 1


class DescriptionError(TunlabError):
    """A topology or scenario description is wrong; the message names the file, the field and the fix."""

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None,
                 hint: str | None = None) -> None:
        where = ", ".join(p for p in (source, field) if p)
        super().__init__(f"{where}: {message}" if where else message, hint)
        self.source = source
        self.field = field
