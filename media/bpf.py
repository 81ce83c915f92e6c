"""Just enough eBPF to load one program and keep one hash map, from Python.

An assembler for the eBPF instruction set (kernel Documentation/bpf/standardization/
instruction-set.rst: 8-byte instructions, registers R0-R10, labels resolved to jump offsets)
and the `bpf()` system calls the relay's kernel fast path needs: create a hash map, read,
write and delete its elements, load a program (with the verifier's log on refusal) and attach
it at an interface's tcx ingress hook (Linux 6.6+; a link that detaches when its descriptor
closes, so a crashed process leaves nothing behind).

No libbpf, no clang, no ELF: the one program we load (`media.kernel`) is written with
`Asm` in Python, so there is nothing to compile or ship beside the package. Linux only;
`BpfError` carries the errno and, for a refused program, the verifier's words.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
from dataclasses import dataclass
from typing import Final

_NR_BPF: Final = {"x86_64": 321, "aarch64": 280}

# enum bpf_cmd
MAP_CREATE: Final = 0
MAP_LOOKUP_ELEM: Final = 1
MAP_UPDATE_ELEM: Final = 2
MAP_DELETE_ELEM: Final = 3
PROG_LOAD: Final = 5
PROG_TEST_RUN: Final = 10
MAP_LOOKUP_BATCH: Final = 24
LINK_CREATE: Final = 28

MAP_TYPE_HASH: Final = 1
PROG_TYPE_SCHED_CLS: Final = 3
ATTACH_TCX_INGRESS: Final = 46

# Instruction classes, sizes, modes, operations (include/uapi/linux/bpf.h, bpf_common.h).
_LD, _LDX, _ST, _STX, _ALU, _JMP, _ALU64 = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x07
SIZE: Final = {1: 0x10, 2: 0x08, 4: 0x00, 8: 0x18}
_IMM, _MEM, _ATOMIC = 0x00, 0x60, 0xC0
_K, _X = 0x00, 0x08
_ALU_OPS: Final = {
    "add": 0x00, "sub": 0x10, "mul": 0x20, "div": 0x30, "or": 0x40, "and": 0x50,
    "lsh": 0x60, "rsh": 0x70, "neg": 0x80, "mod": 0x90, "xor": 0xA0, "mov": 0xB0,
    "arsh": 0xC0,
}  # fmt: skip
_END, _TO_BE = 0xD0, 0x08
_JMP_OPS: Final = {
    "==": 0x10, ">": 0x20, ">=": 0x30, "&": 0x40, "!=": 0x50, "s>": 0x60, "s>=": 0x70,
    "<": 0xA0, "<=": 0xB0, "s<": 0xC0, "s<=": 0xD0,
}  # fmt: skip
_JA, _CALL, _EXIT = 0x00, 0x80, 0x90
_PSEUDO_MAP_FD: Final = 1


class BpfError(OSError):
    """A `bpf()` call failed: errno, what was asked, and the verifier's log if it has one."""


@dataclass(frozen=True, slots=True)
class Reg:
    n: int

    def __repr__(self) -> str:
        return f"r{self.n}"


R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = (Reg(n) for n in range(11))


class Asm:
    """Builds a program one instruction at a time; `code()` resolves the labels.

    Operands are a `Reg` or an int (an immediate, 32-bit signed as the ISA has it). Jumps name
    a label defined before or after them with `label`.
    """

    def __init__(self) -> None:
        self._insns: list[tuple[int, int, int, int | str, int]] = []
        self._labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        if name in self._labels:
            raise ValueError(f"label {name!r} defined twice")
        self._labels[name] = len(self._insns)

    def _emit(
        self, code: int, dst: int = 0, src: int = 0, off: int | str = 0, imm: int = 0
    ) -> None:
        self._insns.append((code, dst, src, off, imm))

    def alu(self, op: str, dst: Reg, src: Reg | int = 0) -> None:
        """A 64-bit ALU operation: `dst = dst <op> src` (`mov`: dst = src; `neg`: dst = -dst)."""
        code = _ALU64 | _ALU_OPS[op]
        if isinstance(src, Reg):
            self._emit(code | _X, dst.n, src.n)
        else:
            self._emit(code | _K, dst.n, imm=src)

    def mov(self, dst: Reg, src: Reg | int) -> None:
        self.alu("mov", dst, src)

    def to_host(self, dst: Reg, bits: int) -> None:
        """Swap a big-endian field of `bits` (16, 32, 64) loaded from a packet to host order
        (and back): the ISA's "to big endian", a byte swap on little-endian hosts."""
        self._emit(_ALU | _END | _TO_BE, dst.n, imm=bits)

    def load(self, dst: Reg, size: int, base: Reg, off: int) -> None:
        """dst = *(u<size*8> *)(base + off)"""
        self._emit(_LDX | _MEM | SIZE[size], dst.n, base.n, off)

    def store(self, base: Reg, off: int, size: int, src: Reg | int) -> None:
        """*(u<size*8> *)(base + off) = src"""
        if isinstance(src, Reg):
            self._emit(_STX | _MEM | SIZE[size], base.n, src.n, off)
        else:
            self._emit(_ST | _MEM | SIZE[size], base.n, 0, off, src)

    def atomic_add(self, base: Reg, off: int, size: int, src: Reg) -> None:
        """*(u<size*8> *)(base + off) += src, atomically (size 4 or 8)."""
        self._emit(_STX | _ATOMIC | SIZE[size], base.n, src.n, off, 0x00)

    def jump(self, cond: str, dst: Reg, src: Reg | int, to: str) -> None:
        """if (dst <cond> src) goto to; comparisons are 64-bit, `s` ones signed."""
        code = _JMP | _JMP_OPS[cond]
        if isinstance(src, Reg):
            self._emit(code | _X, dst.n, src.n, to)
        else:
            self._emit(code | _K, dst.n, 0, to, src)

    def goto(self, to: str) -> None:
        self._emit(_JMP | _JA, off=to)

    def call(self, helper: int) -> None:
        self._emit(_JMP | _CALL, imm=helper)

    def exit(self) -> None:
        self._emit(_JMP | _EXIT)

    def load_map(self, dst: Reg, map_fd: int) -> None:
        """dst = the map whose descriptor is `map_fd` (a two-slot instruction)."""
        self._emit(_LD | _IMM | SIZE[8], dst.n, _PSEUDO_MAP_FD, 0, map_fd)
        self._emit(0)

    def code(self) -> bytes:
        out = bytearray()
        for i, (code, dst, src, off, imm) in enumerate(self._insns):
            if isinstance(off, str):
                if off not in self._labels:
                    raise ValueError(f"jump to undefined label {off!r}")
                off = self._labels[off] - i - 1
            out += struct.pack("<BBhi", code, (src << 4) | dst, off, imm)
        return bytes(out)


_libc = ctypes.CDLL(None, use_errno=True)
_ATTR_SIZE: Final = 160  # bytes of union bpf_attr we pass; the kernel wants the rest zero


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char], what: str, log: str = "") -> int:
    nr = _NR_BPF.get(platform.machine())
    if nr is None:
        raise BpfError(0, f"{what}: no bpf() system call number for {platform.machine()}")
    ret: int = _libc.syscall(nr, cmd, attr, _ATTR_SIZE)
    if ret < 0:
        err = ctypes.get_errno()
        detail = f"{what}: {os.strerror(err)}"
        if log.strip():
            detail += f"\n{log.strip()}"
        raise BpfError(err, detail)
    return ret


def _attr(fmt: str, *values: int | bytes) -> ctypes.Array[ctypes.c_char]:
    buf = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into(fmt, buf, 0, *values)
    return buf


def _addr(buf: ctypes.Array[ctypes.c_char]) -> int:
    return ctypes.addressof(buf)


class HashMap:
    """A BPF hash map of fixed-size byte keys and values, shared with loaded programs."""

    def __init__(self, name: str, key_size: int, value_size: int, max_entries: int) -> None:
        attr = _attr(
            "<IIIIIII16s", MAP_TYPE_HASH, key_size, value_size, max_entries, 0, 0, 0,
            name.encode()[:15],
        )  # fmt: skip
        self.fd = _bpf(MAP_CREATE, attr, f"creating BPF map {name}")
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self._key = ctypes.create_string_buffer(key_size)
        self._value = ctypes.create_string_buffer(value_size)

    def _elem(self, cmd: int, key: bytes, value: int, flags: int, what: str) -> int:
        if len(key) != self.key_size:
            raise ValueError(f"key of {len(key)} bytes, map takes {self.key_size}")
        ctypes.memmove(self._key, key, self.key_size)
        attr = _attr("<IIQQQ", self.fd, 0, _addr(self._key), value, flags)
        return _bpf(cmd, attr, what)

    def get(self, key: bytes) -> bytes | None:
        try:
            self._elem(MAP_LOOKUP_ELEM, key, _addr(self._value), 0, "reading a BPF map element")
        except BpfError as e:
            if e.errno == 2:  # ENOENT
                return None
            raise
        return self._value.raw

    def put(self, key: bytes, value: bytes) -> None:
        if len(value) != self.value_size:
            raise ValueError(f"value of {len(value)} bytes, map takes {self.value_size}")
        ctypes.memmove(self._value, value, self.value_size)
        self._elem(MAP_UPDATE_ELEM, key, _addr(self._value), 0, "writing a BPF map element")

    def delete(self, key: bytes) -> bool:
        try:
            self._elem(MAP_DELETE_ELEM, key, 0, 0, "deleting a BPF map element")
        except BpfError as e:
            if e.errno == 2:
                return False
            raise
        return True

    def dump(self) -> tuple[bytes, bytes, int]:
        """Every element in a few system calls (BPF_MAP_LOOKUP_BATCH): the keys back to back,
        the values back to back, and how many there are."""
        ks, vs, cap = self.key_size, self.value_size, self.max_entries
        keys = ctypes.create_string_buffer(cap * ks)
        values = ctypes.create_string_buffer(cap * vs)
        token_in, token_out = ctypes.create_string_buffer(8), ctypes.create_string_buffer(8)
        total, resume = 0, 0
        while total < cap:
            attr = _attr(
                "<QQQQIIQQ", resume, _addr(token_out), _addr(keys) + total * ks,
                _addr(values) + total * vs, cap - total, self.fd, 0, 0,
            )  # fmt: skip
            try:
                _bpf(MAP_LOOKUP_BATCH, attr, "reading a BPF map")
                done = False
            except BpfError as e:
                if e.errno != 2:  # ENOENT: that was the last batch
                    raise
                done = True
            total += struct.unpack_from("<I", attr, 32)[0]
            if done:
                break
            ctypes.memmove(token_in, token_out, 8)
            resume = _addr(token_in)
        return keys.raw[: total * ks], values.raw[: total * vs], total

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def load_program(name: str, code: bytes, prog_type: int = PROG_TYPE_SCHED_CLS) -> int:
    """Load `code` (from `Asm.code`) under the GPL (its helpers need it); the program's
    descriptor. A refusal raises `BpfError` with the verifier's log."""
    insns = ctypes.create_string_buffer(code, len(code))
    license = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(1 << 20)
    attr = _attr(
        "<IIQQIIQII16sII", prog_type, len(code) // 8, _addr(insns), _addr(license), 1,
        len(log), _addr(log), 0, 0, name.encode()[:15], 0, 0,
    )  # fmt: skip
    try:
        return _bpf(PROG_LOAD, attr, f"loading BPF program {name}")
    except BpfError as e:
        raise BpfError(e.errno, f"{e.strerror}\n{log.value.decode(errors='replace')}") from None


def attach_tcx_ingress(prog_fd: int, ifindex: int) -> int:
    """Run the program on every packet the interface receives, after the programs already
    there; the link's descriptor (closing it detaches the program)."""
    attr = _attr("<IIIIIIQ", prog_fd, ifindex, ATTACH_TCX_INGRESS, 0, 0, 0, 0)
    return _bpf(LINK_CREATE, attr, f"attaching to tcx ingress of interface {ifindex}")


def test_run(prog_fd: int, packet: bytes) -> tuple[int, bytes]:
    """Run a loaded program once on `packet` (an Ethernet frame) without any interface: its
    return value and the packet as it left it (BPF_PROG_TEST_RUN; nothing is sent)."""
    data_in = ctypes.create_string_buffer(packet, len(packet))
    data_out = ctypes.create_string_buffer(len(packet) + 256)
    attr = _attr(
        "<IIIIQQII", prog_fd, 0, len(packet), len(data_out), _addr(data_in), _addr(data_out), 1, 0
    )
    _bpf(PROG_TEST_RUN, attr, "test-running a BPF program")
    retval, _, size_out = struct.unpack_from("<III", attr, 4)
    return ctypes.c_int32(retval).value, data_out.raw[:size_out]
