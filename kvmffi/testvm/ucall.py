"""The ucall channel as the guest program was built: its port, commands, struct layout and
assertion kinds come from the guest ELF's debug information (kvmffi_guest.h is their one source),
and the slow-path ucalls (printf, assertion, exception) become text or errors here."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from ..guest import x86
from ..guest.elf import GuestImage
from .errors import GuestAssertionError, GuestException


@dataclass(frozen=True)
class UcallAbi:
    port: int
    size: int             # sizeof(struct ucall)
    buffer_offset: int    # offsetof(struct ucall, buffer): GUEST_PRINTF's text
    buffer_len: int
    sync: int
    abort: int
    printf: int
    done: int
    exception: int
    assert_with_values: frozenset[int]   # ASSERT_KIND_EQ, ASSERT_KIND_NE: a and b are shown
    header: struct.Struct                # cmd and the args, unpacked at once

    @classmethod
    def of(cls, image: GuestImage) -> UcallAbi:
        """The ABI ``image`` was built with (read once per image)."""
        known = _abis.get(id(image))
        if known is not None and known[0] is image:
            return known[1]
        abi = cls._read(image)
        _abis[id(image)] = (image, abi)
        return abi

    @classmethod
    def _read(cls, image: GuestImage) -> UcallAbi:
        c = image.constant
        layout = image.struct("ucall")
        nargs = c("UCALL_MAX_ARGS")
        return cls(port=c("UCALL_PORT"), size=layout.size, buffer_offset=layout.offsets["buffer"],
                   buffer_len=c("UCALL_BUFFER_LEN"), sync=c("UCALL_SYNC"), abort=c("UCALL_ABORT"),
                   printf=c("UCALL_PRINTF"), done=c("UCALL_DONE"), exception=c("UCALL_EXCEPTION"),
                   assert_with_values=frozenset((c("ASSERT_KIND_EQ"), c("ASSERT_KIND_NE"))),
                   header=struct.Struct(f"<{1 + nargs}Q"))


_abis: dict[int, tuple[GuestImage, UcallAbi]] = {}  # id(image) -> (image, its ABI); the image kept alive


def _signed(v: int) -> int:
    return v - (1 << 64) if v & (1 << 63) else v


def assertion_error(abi: UcallAbi, args: tuple[int, ...], read_string: Callable[[int], str]) -> GuestAssertionError:
    """GUEST_ASSERT's ABORT: args [kind, condition, file, line, a, b]."""
    kind, cond, file, line, a, b = args[:6]
    msg = f"guest assertion failed at {read_string(file)}:{line}: {read_string(cond)}"
    if kind in abi.assert_with_values:
        msg += f" ({a:#x} vs {b:#x}; as signed: {_signed(a)} vs {_signed(b)})"
    return GuestAssertionError(msg)


def exception_error(args: tuple[int, ...], where: Callable[[int], str]) -> GuestException:
    """The IDT stubs' report: args [vector, error code, rip, cr2, rsp]."""
    vec, err, rip, cr2 = args[:4]
    name = x86.VECTOR_NAMES.get(vec, f"vector {vec}")
    msg = f"guest {name} at rip={rip:#x}{where(rip)}"
    if vec == 14:
        pf = ("write" if err & 2 else "read") + (", present" if err & 1 else ", not present")
        msg += f" cr2={cr2:#x} error_code={err:#x} ({pf})"
    elif err:
        msg += f" error_code={err:#x}"
    return GuestException(msg, vec, err, rip, cr2)
