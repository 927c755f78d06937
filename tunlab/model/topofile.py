"""Loading a topology file.

Convention: a topology file is a Python file that defines a module-level ``topology``, either a
:class:`tunlab.model.Topology` or a function that returns one. Command-line parameters
(``-p NAME=VALUE``) become keyword arguments of that function; values that look like integers, floats or
booleans are converted. A TOPOLOGY argument is a path to such a file, or the name of a file in the
``topologies/`` folder shipped with tunlab (``linear``, ``three_vnf``, ``fork``) or in a folder listed in ``$TUNLAB_TOPOLOGIES``.
Errors name the file.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from tunlab.errors import DescriptionError
from tunlab.model.topology import Topology, TopologyError, loading

SUFFIXES = (".py", ".yaml", ".yml")
# shipped with the package (tunlab/topologies is a link to the clone's topologies/; a wheel holds the files)
BUILTIN_DIR = (Path(__file__).resolve().parents[1] / "topologies").resolve()
SCENARIOS_DIR = (Path(__file__).resolve().parents[1] / "scenarios").resolve()


def search_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("TUNLAB_TOPOLOGIES", "").split(os.pathsep) if p]
    return [*extra, BUILTIN_DIR]


def find_topology(ref: str) -> Path:
    """The file a TOPOLOGY argument names."""
    p = Path(ref)
    if p.suffix in SUFFIXES or os.sep in ref:
        if not p.is_file():
            raise DescriptionError("no such topology file", source=ref, hint="give a path to a .py or .yaml file")
        return p
    for d in search_dirs():
        for suffix in SUFFIXES:  # a name: the Python file first, then the YAML one
            cand = d / f"{ref}{suffix}"
            if cand.is_file():
                return cand
    known = sorted({q.stem for d in search_dirs() if d.is_dir() for q in d.iterdir()
                    if q.suffix in SUFFIXES and q.stem != "__init__"})
    raise DescriptionError(f"no topology named '{ref}'", source=None,
                           hint=f"known: {', '.join(known) or 'none'}; or give a path to a .py file")


def parse_params(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``["n_vnfs=5", "transport=tcp"]`` -> ``{"n_vnfs": 5, "transport": "tcp"}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.isidentifier():
            raise DescriptionError(f"parameter {item!r} is not NAME=VALUE", field="--param",
                                   hint="write e.g. -p n_vnfs=5")
        value: Any = raw
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            for conv in (int, float):
                try:
                    value = conv(raw)
                    break
                except ValueError:
                    pass
        out[key] = value
    return out


def load_topology(ref: str | os.PathLike[str], params: dict[str, Any] | None = None) -> Topology:
    """Load ``topology`` from a file (see the module docstring). Every error names the file."""
    path = find_topology(os.fspath(ref))
    src = str(path)
    params = params or {}
    if path.suffix in (".yaml", ".yml"):
        from tunlab.model.yamlfile import load_yaml_topology

        return load_yaml_topology(path, params)
    mod_name = f"tunlab_topology_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise DescriptionError("cannot load this file as Python", source=src)
    module = importlib.util.module_from_spec(spec)
    with loading(src):
        sys.modules[mod_name] = module  # so dataclasses and hooks defined in the file resolve
        try:
            spec.loader.exec_module(module)
        except TopologyError as exc:
            raise exc.at(src) from None
        except DescriptionError:
            raise
        except SyntaxError as exc:
            raise DescriptionError(f"line {exc.lineno}: {exc.msg}", source=src) from None
        except Exception as exc:  # the user's code failed: say where, in one line
            raise DescriptionError(f"{_where(exc, src)}{type(exc).__name__}: {exc}", source=src,
                                   hint=import_hint(exc)) from None
        obj = getattr(module, "topology", None)
        if obj is None:
            raise DescriptionError("defines no 'topology'", source=src,
                                   hint="set topology = Topology(...) or def topology(...) -> Topology")
        if callable(obj) and not isinstance(obj, Topology):
            accepted = inspect.signature(obj).parameters
            takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
            unknown = [k for k in params if k not in accepted and not takes_any]
            if unknown:
                raise DescriptionError(f"topology() takes no parameter {', '.join(unknown)}", source=src,
                                       field="--param", hint=f"it takes: {', '.join(accepted) or 'nothing'}")
            try:
                obj = obj(**params)
            except TopologyError as exc:
                raise exc.at(src) from None
            except DescriptionError:
                raise
            except Exception as exc:
                raise DescriptionError(f"topology(): {_where(exc, src)}{type(exc).__name__}: {exc}",
                                       source=src) from None
        elif params:
            raise DescriptionError("'topology' is not a function, so it takes no parameters", source=src,
                                   field="--param")
        if not isinstance(obj, Topology):
            raise DescriptionError(f"'topology' is a {type(obj).__name__}, not a tunlab.model.Topology",
                                   source=src)
        if obj.source != src:
            obj = _restamp(obj, src)
        return obj


def resolve_topology(spec: Any, params: dict[str, Any] | None = None, *,
                     relative_to: str | os.PathLike[str] | None = None, source: str | None = None) -> Topology:
    """The one way a topology is named anywhere (scenario files, the pytest marker, the API): a
    :class:`Topology`, a function returning one (called with ``params``), or a topology file's name or path
    (a relative ``.py`` path is looked up next to ``relative_to`` first). ``source`` is the file that
    named it, for the error when ``params`` are given to a Topology that is already built."""
    params = dict(params or {})
    if isinstance(spec, Topology):
        if params:
            raise DescriptionError("'topology' is already built, so it takes no parameters", source=source,
                                   field="params", hint="remove params, or name a topology file")
        return spec
    if isinstance(spec, (str, os.PathLike)):
        ref = os.fspath(spec)
        if relative_to is not None and Path(ref).suffix in SUFFIXES and not os.path.isabs(ref):
            near = Path(relative_to) / ref
            if near.is_file():
                ref = str(near)
        return load_topology(ref, params)
    if callable(spec):
        built = spec(**params)
        if not isinstance(built, Topology):
            raise DescriptionError(f"topology() returned a {type(built).__name__}, not a Topology",
                                   source=source, field="topology")
        return built
    raise DescriptionError(f"{spec!r} is not a topology", source=source, field="topology",
                           hint="use a topology file name, a path, a Topology or a function returning one")


def _restamp(topo: Topology, src: str) -> Topology:
    from dataclasses import replace

    try:
        return replace(topo, source=src)
    except TopologyError as exc:
        raise exc.at(src) from None


def import_hint(exc: BaseException) -> str | None:
    """For a file written against an older tunlab whose internal modules have moved: where to import from."""
    name = getattr(exc, "name", None) or ""
    if isinstance(exc, ImportError) and name.startswith("tunlab"):
        return "import from tunlab itself, e.g. from tunlab import Ping, Udp, Tcp, Topology, Vnf, linear_chain"
    return None


def _where(exc: BaseException, src: str) -> str:
    """'line N: ' for the deepest frame of the exception that lies in the file, else ''."""
    line = None
    for fr in traceback.extract_tb(exc.__traceback__):
        if os.path.abspath(fr.filename) == os.path.abspath(src):
            line = fr.lineno
    return f"line {line}: " if line else ""
