"""Topologies as YAML files, and the JSON Schema of the description, both derived from the model itself.

A YAML topology says what a Python topology file says, field for field (the names are the dataclass fields
of :mod:`tunlab.model.topology`), so a new field in the model is a new key here without a line of this
module changing::

    name: three_vnf
    params: {transport: udp}              # defaults of ${name} substitutions; `-p NAME=VALUE` overrides
    endpoints:
      - {name: sender, overlay: 172.16.0.1}
    vnfs:
      - {name: vnf1, overlay: 172.16.1.1}
      - name: vnf3
        overlay: 172.16.1.3
        routes: [{dst: 172.16.9.0/24, type: blackhole}]
    links:
      - {a: sender, b: vnf1, a_addr: 10.0.0.1/30, b_addr: 10.0.0.2/30, transport: "${transport}"}
    paths:
      - nodes: [sender, vnf1, vnf3, receiver]

YAML rather than TOML: lists of nodes and links with nested tables read naturally in it, multi-line
nftables rulesets fit as block scalars, and containerlab, netlab and Kathara users write YAML already.
Errors are the model's own one-line errors, with the file, line and column of the offending entry.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path as FsPath
from typing import Any

from tunlab.errors import DescriptionError
from tunlab.model import topology as model
from tunlab.model.nsh import ServicePath
from tunlab.model.topology import Endpoint, Link, Path, Route, Topology, TopologyError, Vnf, loading

SCHEMA_ID = "https://tunlab.invalid/schemas/topology.schema.json"
#: the lists of a topology and the class of their items
LISTS: dict[str, type] = {"endpoints": Endpoint, "vnfs": Vnf, "links": Link, "paths": Path,
                          "service_paths": ServicePath}
#: nested lists inside items
NESTED: dict[tuple[type, str], type] = {(Vnf, "routes"): Route}
#: fields a file cannot set (computed, or Python objects)
HIDDEN = {"source"}
_SUBST = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


# ----------------------------------------------------------------------------------------------- loading


class _Marked:
    """YAML values with the position of every mapping and sequence item, by path."""

    def __init__(self) -> None:
        self.marks: dict[tuple[Any, ...], tuple[int, int]] = {}

    def convert(self, node: Any, path: tuple[Any, ...] = ()) -> Any:
        import yaml

        self.marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            out = {}
            for k, v in node.value:
                key = self.convert(k, path + ("<key>",))
                out[key] = self.convert(v, path + (key,))
                self.marks[path + (key,)] = (k.start_mark.line + 1, k.start_mark.column + 1)  # point at the key
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.convert(v, path + (i,)) for i, v in enumerate(node.value)]
        return yaml.SafeLoader(" ").construct_object(node, deep=True)  # scalars: YAML's own typing


def _fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in HIDDEN
            and not f.name.startswith("_")}


def _where(src: str, marks: _Marked, path: tuple[Any, ...]) -> str:
    while path and path not in marks.marks:
        path = path[:-1]
    line, col = marks.marks.get(path, (0, 0))
    return f"line {line}, column {col}: " if line else ""


def _unknown(src: str, marks: _Marked, path: tuple[Any, ...], data: dict[str, Any], known: set[str],
             what: str) -> None:
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(sorted(known))}"
            raise DescriptionError(f"{_where(src, marks, path + (key,))}{key!r} is not a field of {what}",
                                   source=src, field=".".join(str(p) for p in path + (key,)), hint=hint)


def _substitute(value: Any, params: dict[str, Any], src: str, marks: _Marked, path: tuple[Any, ...]) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, params, src, marks, path + (k,)) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, params, src, marks, path + (i,)) for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:
        def one(m: re.Match[str]) -> str:
            if m.group(1) not in params:
                raise DescriptionError(f"{_where(src, marks, path)}${{{m.group(1)}}} is not a parameter",
                                       source=src, field=".".join(str(p) for p in path),
                                       hint=f"declare it under params: (known: {', '.join(params) or 'none'})")
            return str(params[m.group(1)])
        whole = _SUBST.fullmatch(value)
        if whole:  # "${mtu}" keeps the parameter's type (an int stays an int)
            one(whole)
            return params[whole.group(1)]
        return _SUBST.sub(one, value)
    return value


def _build(cls: type, data: Any, src: str, marks: _Marked, path: tuple[Any, ...]) -> Any:
    what = cls.__name__
    if not isinstance(data, dict):
        raise DescriptionError(f"{_where(src, marks, path)}{what} entries are mappings (name: value, ...)",
                               source=src, field=".".join(str(p) for p in path),
                               hint="write it as {name: ..., ...} or as indented key: value lines")
    fields = _fields(cls)
    _unknown(src, marks, path, data, set(fields), what)
    kwargs = {}
    for key, value in data.items():
        nested = NESTED.get((cls, key))
        if nested is not None and isinstance(value, list):
            value = tuple(_build(nested, v, src, marks, path + (key, i)) for i, v in enumerate(value))
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TopologyError as exc:
        raise TopologyError(f"{_where(src, marks, path)}{exc.raw}", field=exc.field or "", hint=exc.hint,
                            source=src) from None
    except TypeError as exc:  # a required field is missing
        missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        raise DescriptionError(f"{_where(src, marks, path)}{what} needs {', '.join(missing) or 'other fields'}",
                               source=src, field=".".join(str(p) for p in path), hint=str(exc)) from None


def load_yaml_topology(path: str | FsPath, params: dict[str, Any] | None = None) -> Topology:
    """Load a YAML topology file (see the module docstring); every error names the file, line and column."""
    import yaml

    src = str(path)
    try:
        text = FsPath(path).read_text()
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except OSError as exc:
        raise DescriptionError(f"cannot read the file: {exc.strerror}", source=src) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise DescriptionError(f"{where}not valid YAML: {getattr(exc, 'problem', None) or exc}",
                               source=src) from None
    if node is None:
        raise DescriptionError("the file is empty", source=src, hint="start with name: and endpoints:")
    marks = _Marked()
    data = marks.convert(node)
    if not isinstance(data, dict):
        raise DescriptionError("a topology file is a mapping (name:, endpoints:, vnfs:, links:, paths:)",
                               source=src)
    declared = data.pop("params", None) or {}
    if not isinstance(declared, dict):
        raise DescriptionError(f"{_where(src, marks, ('params',))}params is a mapping of name: default",
                               source=src, field="params")
    for key in params or {}:
        if key not in declared:
            raise DescriptionError(f"this topology takes no parameter {key}", source=src, field="--param",
                                   hint=f"it takes: {', '.join(declared) or 'nothing'}")
    values = {**declared, **(params or {})}
    data = _substitute(data, values, src, marks, ())
    top_fields = _fields(Topology)
    _unknown(src, marks, (), data, set(top_fields) | {"params"}, "a topology")
    kwargs: dict[str, Any] = {}
    with loading(src):
        for key, value in data.items():
            cls = LISTS.get(key)
            if cls is not None:
                if not isinstance(value, list):
                    raise DescriptionError(f"{_where(src, marks, (key,))}{key} is a list", source=src, field=key,
                                           hint=f"write {key}: followed by '- ...' items")
                value = tuple(_build(cls, v, src, marks, (key, i)) for i, v in enumerate(value))
            kwargs[key] = value
        kwargs.setdefault("name", FsPath(src).stem)
        for key in LISTS:  # a list left out is empty (the model says what must not be)
            kwargs.setdefault(key, ())
        return Topology(**kwargs, source=src)


# ------------------------------------------------------------------------------------------------ schema


def _type_schema(tp: Any, owner: type, name: str) -> dict[str, Any]:
    nested = NESTED.get((owner, name))
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if nested is not None:
        return {"type": "array", "items": {"$ref": f"#/$defs/{nested.__name__}"}}
    if tp is str:
        return {"type": "string"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if tp is Any:
        return {"type": "object", "additionalProperties": {"type": ["number", "string", "boolean"]}}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (tuple, list):
        return {"type": "array", "items": _type_schema(args[0], owner, name) if args else {}}
    if origin in (typing.Union, types.UnionType):
        options = [_type_schema(a, owner, name) for a in args  # a Python function has no YAML form
                   if a is not type(None) and typing.get_origin(a) is not collections.abc.Callable]
        nullable = type(None) in args
        if nullable:
            options.append({"type": "null"})
        return options[0] if len(options) == 1 else {"anyOf": options}
    return {}


def _object_schema(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls, vars(model))
    props = {}
    required = []
    for name, f in _fields(cls).items():
        props[name] = _type_schema(hints[name], cls, name)
        doc_default = f.default if f.default is not dataclasses.MISSING else None
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(name)
        elif isinstance(doc_default, (str, int, float, bool)):
            props[name]["default"] = doc_default
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = required
    doc = (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
    if doc:
        out["description"] = doc
    return out


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a topology file (YAML or JSON), generated from the model's dataclasses."""
    top = _object_schema(Topology)
    for key, cls in LISTS.items():
        top["properties"][key] = {"type": "array", "items": {"$ref": f"#/$defs/{cls.__name__}"}}
    top["properties"]["params"] = {"type": "object", "description": "defaults of ${NAME} substitutions"}
    top["required"] = ["endpoints", "links", "paths"]
    defs = {cls.__name__: _object_schema(cls) for cls in (*LISTS.values(), *NESTED.values())}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
            "title": "tunlab topology", **top, "$defs": defs}
