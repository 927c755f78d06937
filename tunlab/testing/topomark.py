"""``@pytest.mark.tunlab_topology(my_chain)``: the marker takes a topology function alone.

pytest takes a lone callable given to a marker as the object being decorated: ``tunlab_topology(fw_chain)``
would mark ``fw_chain`` and then call ``fw_chain(test_function)`` (a TypeError, or worse, a test silently
replaced by what the function returned). While the plugin is configured, ``pytest.mark.tunlab_topology`` is
this module's :class:`TopologyMarkDecorator`: a lone callable that is not a test (a class, or a function whose
name matches ``python_functions``) is the marker's argument, as ``.with_args(fw_chain)`` would make it. Every
other use is pytest's own ``MarkDecorator``, so marks, ``-m`` and ``pytestmark`` work as for any marker.
"""

from __future__ import annotations

import fnmatch
import inspect
from typing import Any

import pytest

NAME = "tunlab_topology"
_OWNER = pytest.StashKey[bool]()


def _base() -> Any:
    """pytest's own MarkDecorator for the marker (checked against the registered markers as usual)."""
    return type(pytest.mark).__getattr__(pytest.mark, NAME)


class TopologyMarkDecorator:
    def __init__(self, test_patterns: list[str]) -> None:
        self.test_patterns = test_patterns

    def _is_test(self, obj: object) -> bool:
        if inspect.isclass(obj):
            return True
        name = getattr(obj, "__name__", "")
        return any(fnmatch.fnmatch(name, p) if any(c in p for c in "*?[") else name.startswith(p)
                   for p in self.test_patterns)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and not kwargs and callable(args[0]) and not self._is_test(args[0]):
            return _base().with_args(args[0])  # the topology function, not the decorated test
        return _base()(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # mark, name, args, kwargs, with_args: pytest's
        return getattr(_base(), name)

    def __repr__(self) -> str:
        return f"<TopologyMarkDecorator {NAME}>"


def install(config: pytest.Config) -> None:
    if NAME in vars(pytest.mark):
        return  # an outer session (pytester in-process runs) installed it
    patterns = list(config.getini("python_functions") or ["test"])
    setattr(pytest.mark, NAME, TopologyMarkDecorator(patterns))
    config.stash[_OWNER] = True


def uninstall(config: pytest.Config) -> None:
    if config.stash.get(_OWNER, False):
        vars(pytest.mark).pop(NAME, None)
        config.stash[_OWNER] = False
