"""The plugin's command-line options, defined once.

``add_options(add_func)`` takes any ``add_argument``-like callable (pytest's ``group.addoption`` or
argparse's ``parser.add_argument``), so a script that drives pytest-style runs can offer the same flags.
``Settings.from_config`` turns a pytest config into the values the fixtures use.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

BACKENDS = ("netns", "mininet")
DEFAULT_RESULTS = "tunlab-results"


def add_options(add_func: Callable[..., Any]) -> None:
    """Declare the plugin's options through ``add_func(*flags, **argparse_kwargs)``."""
    add_func("--tunlab-keep", action="store_true", default=False, dest="tunlab_keep",
             help="keep the artefacts (pcaps, relay logs, EXPECTED/RECEIVED) of passing tests too; "
                  "failing tests always keep theirs")
    add_func("--tunlab-backend", action="store", default="netns", choices=BACKENDS, dest="tunlab_backend",
             help="backend the lab fixtures build labs with (default: netns)")
    add_func("--tunlab-results", action="store", default=None, metavar="DIR", dest="tunlab_results",
             help=f"folder for per-test artefacts (default: <rootdir>/{DEFAULT_RESULTS})")
    add_func("--tunlab-hosts", action="store", default=None, metavar="FILE", dest="tunlab_hosts",
             help="an inventory (docs/multihost.md): the lab fixtures place their labs across its hosts")


def add_ini(parser: pytest.Parser) -> None:
    parser.addini("tunlab_netns_paths", type="paths", default=[],
                  help="folders whose tests must all carry @pytest.mark.netns (collection fails otherwise)")
    parser.addini("tunlab_scenario_dirs", type="paths", default=[],
                  help="folders (relative to the configuration file) whose *.py files setting `traffic` are "
                       "collected as tunlab scenarios; none by default")


@dataclass(frozen=True)
class Settings:
    keep: bool
    backend: str
    results: Path
    worker: str          # "main" or the pytest-xdist worker id (gw0, gw1, ...)
    session_token: str   # shared by all workers of one run, different between runs
    hosts: Path | None = None  # --tunlab-hosts: labs across the inventory's hosts

    @property
    def session_dir(self) -> Path:
        """Where this process puts its per-test folders: unique per run and per xdist worker."""
        return self.results / f"{self.session_token}-{self.worker}"

    @classmethod
    def from_config(cls, config: pytest.Config) -> Settings:
        results = config.getoption("tunlab_results")
        path = Path(results) if results else config.rootpath / DEFAULT_RESULTS
        if not path.is_absolute():
            path = config.invocation_params.dir / path
        workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
        if workerinput is not None:
            worker = str(workerinput.get("workerid", "gw"))
            token = str(workerinput.get("tunlab_token") or workerinput.get("testrunuid", new_token()))
        else:
            worker, token = "main", new_token()
        hosts = config.getoption("tunlab_hosts")
        return cls(keep=bool(config.getoption("tunlab_keep")), backend=config.getoption("tunlab_backend"),
                   results=path, worker=worker, session_token=token,
                   hosts=(config.invocation_params.dir / hosts) if hosts else None)


def new_token() -> str:
    """A run token: sorts by time, unique across runs started in the same second."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_PLAIN = re.compile(r"[A-Za-z0-9._/-]+(::[A-Za-z0-9_]+)*")


def safe_name(nodeid: str, limit: int = 120) -> str:
    """A folder name for a test id: ``tests/x/test_a.py::test_b`` -> ``tests-x-test_a.py--test_b``.

    Ids with parameters or other characters that do not survive (``[a/b]`` and ``[a-b]``) get a short digest
    of the whole id, so two tests never share a folder.
    """
    name = _UNSAFE.sub("-", nodeid.replace("::", "--")).strip("-.") or "test"
    if _PLAIN.fullmatch(nodeid) and len(name) <= limit:
        return name
    digest = uuid.uuid5(uuid.NAMESPACE_URL, nodeid).hex[:8]
    return f"{name[:limit - 9]}-{digest}"
