"""Loading a VNF hook: ``path/file.py:func`` or ``package.module:func`` -> callable(bytes) -> bytes | None."""

from __future__ import annotations

import os
import sys
from typing import Callable

from tunlab.errors import TunlabError

HookFn = Callable[[bytes], "bytes | bytearray | None"]


def load_hook(spec: str) -> HookFn:
    import importlib
    import importlib.util

    target, sep, func_name = spec.rpartition(":")
    if not sep or not target or not func_name.isidentifier():
        raise TunlabError(f"--hook {spec!r}: expected path/file.py:func or package.module:func")
    if target.endswith(".py") or os.sep in target:
        path = os.path.abspath(target)
        if not os.path.isfile(path):
            raise TunlabError(f"--hook {spec!r}: no such file {path}")
        mod_name = f"tunlab_hook_{abs(hash(path)):x}"
        loader_spec = importlib.util.spec_from_file_location(mod_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise TunlabError(f"--hook {spec!r}: cannot load {path} as Python")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[mod_name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:
            raise TunlabError(f"--hook {spec!r}: importing {path} failed: {type(exc).__name__}: {exc}") from None
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:
            raise TunlabError(f"--hook {spec!r}: cannot import {target}: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise TunlabError(f"--hook {spec!r}: {target} has no function {func_name!r}")
    return fn  # type: ignore[no-any-return]
