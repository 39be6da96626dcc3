"""How the raw layer gets its cffi FFI objects: declarations parsed once per machine.

Parsing C declarations (pycparser) costs seconds inside a test kernel under emulation, on every
import. So the first process to need an FFI writes cffi's out-of-line form of it (a small Python
module holding the parsed types) into the cache, and later processes, the test kernel's included,
import that instead of parsing. Where the cache cannot be written the declarations are parsed in
place, as cffi always can.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import importlib.util
import os
import tempfile
from typing import Any

from .cache import cache_dir


def load(name: str, cdef: str) -> Any:
    """An FFI for ``cdef`` (ABI mode: no compiler needed)."""
    import _cffi_backend
    key = hashlib.sha256(f"{cdef}\0{_cffi_backend.__version__}".encode()).hexdigest()[:16]
    module = f"_kvmffi_{name}_{key}"
    path = cache_dir() / "cffi" / f"{module}.py"
    if path.exists():
        spec = importlib.util.spec_from_file_location(module, path)
        if spec is not None and spec.loader is not None:
            mod = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(mod)
                return mod.ffi
            except Exception:  # a damaged cache file: parse instead, and rewrite it below
                pass
    import cffi
    builder = cffi.FFI()
    builder.cdef(cdef)
    builder.set_source(module, None)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        with contextlib.redirect_stdout(io.StringIO()):  # cffi says "generating ..."
            builder.emit_python_code(tmp)
        os.replace(tmp, path)
        tmp = None
    except OSError:
        pass  # read-only cache: use the parsed declarations
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return builder
