"""The raw layer's KVM calls through cffi (``_libc`` holds the other system calls).

The raw layer is ``_cdef`` (the struct declarations and the FFI), ``_ioctls`` (the ioctl table),
``_structs`` (struct.Struct fast paths), ``_run`` (struct kvm_run), this module and ``_libc``:
the only modules that touch cffi. Nothing outside it sees cdata: the helpers below take and
return ints, bytes, tuples and dicts. Each call returns its errno and never raises: the object
layer turns failures into KvmError with the ioctl's name and arguments.
"""

from __future__ import annotations

import errno
from typing import Any

from ._cdef import ffi
from ._ioctls import KVM_GET_SUPPORTED_CPUID, KVM_SET_CPUID2

_libc = ffi.dlopen(None)
_ulong = ffi.typeof("unsigned long")
_ioctl = _libc.ioctl
_cast = ffi.cast


def ioctl_int(fd: int, request: int, arg: int = 0) -> tuple[int, int]:
    ret = _ioctl(fd, request, _cast(_ulong, arg))
    return ret, (ffi.errno if ret < 0 else 0)


CPUID_FIELDS = ("function", "index", "flags", "eax", "ebx", "ecx", "edx")


def get_supported_cpuid(fd: int) -> tuple[list[tuple[int, ...]], int]:
    """KVM_GET_SUPPORTED_CPUID: (entries as tuples of CPUID_FIELDS, errno)."""
    n = 128
    while True:
        buf = ffi.new("char[]", 8 + 40 * n)
        c = ffi.cast("struct kvm_cpuid2 *", buf)
        c.nent = n
        ret = _ioctl(fd, KVM_GET_SUPPORTED_CPUID, c)
        if ret < 0:
            err = ffi.errno
            if err == errno.E2BIG and n < 4096:  # more entries than asked for
                n *= 2
                continue
            return [], err
        return [tuple(getattr(c.entries[i], f) for f in CPUID_FIELDS) for i in range(c.nent)], 0


_cpuid_bufs: dict[tuple[tuple[int, ...], ...], tuple[Any, Any]] = {}


def set_cpuid2(fd: int, entries: list[tuple[int, ...]]) -> int:
    """KVM_SET_CPUID2; returns 0 or the errno. The struct for a given entry list is built once."""
    key = tuple(entries)
    cached = _cpuid_bufs.get(key)
    if cached is None:
        buf = ffi.new("char[]", 8 + 40 * len(entries))
        c = ffi.cast("struct kvm_cpuid2 *", buf)
        c.nent = len(entries)
        for i, e in enumerate(entries):
            for f, v in zip(CPUID_FIELDS, e, strict=True):
                setattr(c.entries[i], f, v)
        if len(_cpuid_bufs) > 16:
            _cpuid_bufs.clear()
        cached = _cpuid_bufs[key] = (buf, c)
    ret = _ioctl(fd, KVM_SET_CPUID2, cached[1])
    return ffi.errno if ret < 0 else 0


# ---------------------------------------------------------------------------
# Struct ioctls: plain values in, plain values out
# ---------------------------------------------------------------------------
_INT_WIDTH: dict[Any, tuple[int, bool]] = {}


def _fit(ctype: Any, v: Any) -> Any:
    """``v`` as ``ctype`` holds it: negative tests pass any bit pattern, stored truncated to the
    field's width (and as the signed value of that pattern for signed fields)."""
    kind = ctype.kind
    if kind == "primitive":
        info = _INT_WIDTH.get(ctype)
        if info is None:
            info = _INT_WIDTH[ctype] = (ffi.sizeof(ctype) * 8, int(ffi.cast(ctype, -1)) < 0)
        bits, signed = info
        v = int(v) & ((1 << bits) - 1)
        return v - (1 << bits) if signed and v >= 1 << (bits - 1) else v
    if kind == "array":
        return [_fit(ctype.item, x) for x in v]
    if kind == "struct":
        fields = dict(ctype.fields)
        unknown = set(v) - set(fields)
        if unknown:
            raise TypeError(f"{ctype.cname} has no field {', '.join(sorted(unknown))}")
        return {k: _fit(fields[k].type, x) for k, x in v.items()}
    return v


def _plain(c: Any) -> Any:
    """A cdata struct or array as dicts, tuples and ints."""
    if not isinstance(c, ffi.CData):
        return c
    t = ffi.typeof(c)
    if t.kind == "struct":
        return {name: _plain(getattr(c, name)) for name, _ in t.fields}
    if t.kind == "array":
        return tuple(_plain(x) for x in c)
    return c


def ioctl_struct(fd: int, request: int, struct: str, fields: dict[str, Any] | None = None) -> tuple[int, int, dict[str, Any]]:
    """An ioctl whose argument is a pointer to ``struct`` (zeroed, then ``fields``, nested dicts and
    lists for nested structs and arrays). Returns (result, errno, the struct as the kernel left it)."""
    t = ffi.typeof(struct)
    p = ffi.new(struct + " *", _fit(t, fields or {}))
    ret = _ioctl(fd, request, p)
    return ret, (ffi.errno if ret < 0 else 0), _plain(p[0])


def ioctl_bytes(fd: int, request: int, struct: str) -> tuple[int, int, bytes]:
    """An ioctl that fills ``struct``: (result, errno, its bytes), e.g. for a C program to load."""
    p = ffi.new(struct + " *")
    ret = _ioctl(fd, request, p)
    return ret, (ffi.errno if ret < 0 else 0), bytes(ffi.buffer(p))
