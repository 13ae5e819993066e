"""TLS libraries the TLS source can instrument, and what it cannot see.

uprobes attach to a function's address in a file: the library must export the functions (its
dynamic symbol table names them). Found here: the system's OpenSSL (libssl.so.3, .so.1.1) and
GnuTLS (libgnutls.so.30), a library named by the user (``--tls-lib``, e.g. a copy in a container's
root), or those a process has mapped (``--pid``). ``inspect`` says what a file is and whether the
functions are there; ``blind_spots`` what no uprobe on a shared library sees, with the reason.

Where a probe goes (``Site``, ``plan_sites``): a uprobe is a breakpoint; when the kernel cannot
emulate the instruction under it, it single-steps a copy of it, a second trap (measured on this
project's 2-core VM, kernel 6.18: ~17 us a call single-stepped, ~0.5 us emulated; see
docs/benchmarks.md). x86-64 Linux emulates push reg, call/jmp/jcc with an immediate target and nop
(arch/x86/kernel/uprobes.c); OpenSSL 3's SSL_read/SSL_write/_ex start with ``sub $n,%rsp``, which
it steps. They are thin wrappers: SSL_read_ex is ``sub; call ssl_read_internal`` with its
arguments untouched, and SSL_read calls the same function; that callee starts with ``push``. So the
read and write probes go on the callee (found by decoding the wrappers with capstone, checked as
above; else each function's entry, as before): one cheap trap a call instead of two, and one site
for both variants (the _ex semantics: the 4th argument is the length's pointer).

Reads ELF files with pyelftools and decodes a few instructions with capstone (no bcc needed, so
`doctor` works where bcc is missing). Cost: one pass over a library's dynamic symbols (a few
thousand entries) per file, and the decoding of four functions.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from shadowtap.errors import InputError


class Kind(str, Enum):
    OPENSSL = "openssl"
    GNUTLS = "gnutls"
    UNKNOWN = "unknown"


# function -> the BPF program names (entry, return) attached to it; None: no return probe.
OPENSSL_PROBES: dict[str, tuple[str, str | None]] = {
    "SSL_read": ("enter_read", "leave_call"),
    "SSL_read_ex": ("enter_read_ex", "leave_call"),
    "SSL_write": ("enter_write", "leave_call"),
    "SSL_write_ex": ("enter_write_ex", "leave_call"),
    "SSL_do_handshake": ("enter_handshake", "leave_call"),
    "SSL_free": ("enter_free", None),
}
GNUTLS_PROBES: dict[str, tuple[str, str | None]] = {
    "gnutls_record_recv": ("enter_read", "leave_call"),
    "gnutls_record_send": ("enter_write", "leave_call"),
    "gnutls_handshake": ("enter_handshake", "leave_call"),
    "gnutls_deinit": ("enter_free", None),
}
# Without these the source records nothing from the library; the others (the _ex variants, the
# handshake, the free) improve it where present (OpenSSL 1.1.0 has no _ex functions).
REQUIRED = {
    Kind.OPENSSL: ("SSL_read", "SSL_write"),
    Kind.GNUTLS: ("gnutls_record_recv", "gnutls_record_send"),
}
# Wrapper pairs whose common callee takes both variants' calls: (plain, _ex, the entry program
# with the _ex semantics).
OPENSSL_SHARED = (
    ("SSL_read", "SSL_read_ex", "enter_read_ex"),
    ("SSL_write", "SSL_write_ex", "enter_write_ex"),
)
_SONAMES = re.compile(
    rb"^\s*(libssl\.so\.(?:3|1\.1)|libgnutls\.so\.30)\s.*x86-64.*=>\s*(\S+)", re.M
)
_VERSION = re.compile(rb"(OpenSSL \d+\.\d+\.\d+[a-z]?(?:-\w+)? +\d+ \w+ \d{4})|(BoringSSL)")


@dataclass(frozen=True, slots=True)
class Site:
    """One attachment: BPF program ``entry`` (and ``ret``, a return probe, so ``addr`` is a
    function's first instruction) at ``addr``, a virtual address in the library file."""

    addr: int
    entry: str
    ret: str | None
    observes: tuple[str, ...]  # the exported functions whose calls it sees
    stepped: bool  # the kernel single-steps the instruction there: a second trap a call

    def describe(self) -> str:
        where = (
            self.observes[0]
            if len(self.observes) == 1
            else f"{'/'.join(self.observes)} (their common callee at {self.addr:#x})"
        )
        return where + (" [single-stepped]" if self.stepped else "")


@dataclass(frozen=True, slots=True)
class TlsLibrary:
    path: str
    kind: Kind
    version: str
    present: tuple[str, ...]  # probed functions the file exports
    missing: tuple[str, ...]  # probed functions it does not
    stripped: bool  # no .symtab (exports still work: uprobes need .dynsym only)
    sites: tuple[Site, ...] = ()  # where the probes go (plan_sites)

    @property
    def usable(self) -> bool:
        return all(f in self.present for f in REQUIRED.get(self.kind, ("?",)))

    @property
    def probes(self) -> dict[str, tuple[str, str | None]]:
        table = OPENSSL_PROBES if self.kind is Kind.OPENSSL else GNUTLS_PROBES
        return {f: p for f, p in table.items() if f in self.present}


Symbols = Mapping[str, tuple[int, int]]  # exported function -> (address, size)
Code = Callable[[int, int], bytes]  # (address, length) -> the file's bytes there (b"" if none)


def _elf_view(path: str, wanted: set[str]) -> tuple[dict[str, tuple[int, int]], bool, Code]:
    """The file's exported functions (name -> (address, size)), whether it lacks .symtab, and a
    reader of its code by virtual address (through the PT_LOAD segments)."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            dyn = elf.get_section_by_name(".dynsym")
            symbols: dict[str, tuple[int, int]] = {}
            if isinstance(dyn, SymbolTableSection):
                for sym in dyn.iter_symbols():
                    if sym["st_info"]["type"] == "STT_FUNC" and sym["st_shndx"] != "SHN_UNDEF":
                        symbols[sym.name.split("@", 1)[0]] = (sym["st_value"], sym["st_size"])
            segments = [
                (seg["p_vaddr"], seg["p_filesz"], seg["p_offset"])
                for seg in elf.iter_segments()
                if seg["p_type"] == "PT_LOAD"
            ]
            stripped = elf.get_section_by_name(".symtab") is None
            # The code of the functions the planner may decode, and of their callees: read now,
            # while the file is open (a few KiB).
            chunks: dict[int, bytes] = {}

            def read(addr: int, n: int) -> bytes:
                for vaddr, size, offset in segments:
                    if vaddr <= addr < vaddr + size:
                        f.seek(offset + addr - vaddr)
                        return f.read(min(n, vaddr + size - addr))
                return b""

            for name in wanted & symbols.keys():
                addr, size = symbols[name]
                chunks[addr] = read(addr, min(size or _DECODE_MAX, _DECODE_MAX))
            for callee in [_call_after_prologue(c, a) for a, c in chunks.items()]:
                if callee is not None and callee not in chunks:
                    chunks[callee] = read(callee, 20)
    except (OSError, ELFError) as exc:
        raise InputError(f"not a readable ELF library: {exc}", where=path) from exc

    def code(addr: int, n: int) -> bytes:
        return chunks.get(addr, b"")[:n]

    return symbols, stripped, code


# -- probe placement (pure: symbols and bytes in, sites out) --------------------------------------

_DECODE_MAX = 4096  # bytes of a wrapper decoded at most (OpenSSL's are ~150)


def _decoder() -> Any:
    import capstone

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    return md


def emulated(insn: bytes) -> bool:
    """Whether x86-64 Linux emulates this instruction under a uprobe (no single step): the rule of
    arch/x86/kernel/uprobes.c, by its bytes: push reg (REX.B 0x41 allowed), call rel32,
    jmp rel8/rel32, jcc rel8/rel32, nop 0x90 (conservative: a prefixed nop, which it emulates
    too, is reported as stepped). ``insn`` is one whole instruction."""
    if not insn:
        return False
    b0 = insn[0]
    if len(insn) == 1:
        return 0x50 <= b0 <= 0x57 or b0 == 0x90
    if len(insn) == 2 and b0 == 0x41:
        return 0x50 <= insn[1] <= 0x57
    if b0 in (0xE8, 0xE9) and len(insn) == 5:
        return True
    if (b0 == 0xEB or 0x70 <= b0 <= 0x7F) and len(insn) == 2:
        return True
    return b0 == 0x0F and len(insn) == 6 and 0x80 <= insn[1] <= 0x8F


_ENDBR64 = b"\xf3\x0f\x1e\xfa"


def _entry_point(code: bytes, addr: int) -> tuple[int, bool]:
    """Where a function's entry (and return) probe goes, and whether the kernel emulates the
    instruction there: its first instruction, or the one after a leading ``endbr64`` (CET builds
    start every function with it; it changes no register nor the stack, so the return address is
    still at the top of the stack there, as a return probe needs)."""
    if code.startswith(_ENDBR64):
        code, addr = code[len(_ENDBR64) :], addr + len(_ENDBR64)
    for insn in _decoder().disasm(code[:16], addr):
        return addr, emulated(bytes(insn.bytes))
    return addr, False


def _call_after_prologue(code: bytes, addr: int) -> int | None:
    """The target of the ``call rel32`` a function opens with, when only ``endbr64``, ``nop`` or
    ``sub $n,%rsp`` come before it: the argument registers reach the callee untouched."""
    from capstone import x86

    for insn in _decoder().disasm(code[:64], addr):
        if insn.mnemonic in ("endbr64", "nop"):
            continue
        ops = insn.operands
        if (
            insn.mnemonic == "sub"
            and len(ops) == 2
            and ops[0].type == x86.X86_OP_REG
            and ops[0].reg == x86.X86_REG_RSP
            and ops[1].type == x86.X86_OP_IMM
        ):
            continue
        if insn.mnemonic == "call" and len(ops) == 1 and ops[0].type == x86.X86_OP_IMM:
            return int(ops[0].imm)
        return None
    return None


def _calls(code: bytes, addr: int, target: int) -> bool:
    from capstone import x86

    for insn in _decoder().disasm(code, addr):
        ops = insn.operands
        if insn.mnemonic == "call" and len(ops) == 1 and ops[0].type == x86.X86_OP_IMM:
            if ops[0].imm == target:
                return True
    return False


def plan_sites(
    table: Mapping[str, tuple[str, str | None]],
    shared: tuple[tuple[str, str, str], ...],
    symbols: Symbols,
    code: Code,
) -> tuple[Site, ...]:
    """Where each probed function of ``table`` (function -> (entry, return) programs) present in
    ``symbols`` is observed: a pair of ``shared`` (plain, _ex, _ex entry program) on the callee
    both call when the _ex one opens with a call to it (arguments untouched), the plain one calls
    it too, it is not the entry of either, and its first instruction is emulated (else nothing is
    gained); every other function at its own entry."""
    sites: list[Site] = []
    done: set[str] = set()
    for plain, ex, entry in shared:
        if plain not in symbols or ex not in symbols or plain not in table or ex not in table:
            continue
        ex_addr, ex_size = symbols[ex]
        target = _call_after_prologue(code(ex_addr, min(ex_size or 64, 64)), ex_addr)
        if target is None or target in (symbols[plain][0], ex_addr):
            continue
        at, cheap = _entry_point(code(target, 20), target)
        if not cheap:
            continue
        p_addr, p_size = symbols[plain]
        if not _calls(code(p_addr, min(p_size or _DECODE_MAX, _DECODE_MAX)), p_addr, target):
            continue
        sites.append(Site(at, entry, table[ex][1], (plain, ex), False))
        done |= {plain, ex}
    for func, (entry_prog, ret) in table.items():
        if func in done or func not in symbols:
            continue
        at, cheap = _entry_point(code(symbols[func][0], 20), symbols[func][0])
        if not cheap and ret is None:  # no return probe: it may sit further in
            later = _emulated_before_any_write(code(symbols[func][0], 64), symbols[func][0])
            if later is not None:
                at, cheap = later, True
        sites.append(Site(at, entry_prog, ret, (func,), not cheap))
    return tuple(sites)


def _emulated_before_any_write(code: bytes, addr: int) -> int | None:
    """The address of the first emulated instruction of a function when every one before it
    writes the flags only (``test``/``cmp``: the arguments and the stack are as at the entry, and
    every call passes there): SSL_free's ``test %rdi,%rdi; je`` probed at the ``je``."""
    from capstone import x86

    for insn in _decoder().disasm(code, addr):
        if emulated(bytes(insn.bytes)):
            return int(insn.address)
        _read, written = insn.regs_access()
        if any(r != x86.X86_REG_EFLAGS for r in written) or insn.group(x86.X86_GRP_JUMP):
            return None
    return None


def _version(path: str, kind: Kind) -> str:
    """The version string the library (or its libcrypto beside it) carries, or ""."""
    candidates = [path]
    if kind is Kind.OPENSSL:
        candidates.append(re.sub(r"libssl(\.so[.\d]*)$", r"libcrypto\1", path))
    for p in candidates:
        try:
            with open(p, "rb") as f:
                m = _VERSION.search(f.read())
        except OSError:
            continue
        if m:
            return m.group(0).decode()
    if kind is Kind.GNUTLS:
        try:  # the library says it itself (loading it runs no code of ours)
            import ctypes

            fn = ctypes.CDLL(path).gnutls_check_version
            fn.restype = ctypes.c_char_p
            return f"GnuTLS {fn(None).decode()}"
        except (OSError, AttributeError):
            return "GnuTLS"
    return ""


def inspect(path: str) -> TlsLibrary:
    """What ``path`` is and which of the probed functions it exports."""
    everything = set(OPENSSL_PROBES) | set(GNUTLS_PROBES)
    symbols, stripped, code = _elf_view(path, everything)
    names = symbols.keys()
    base = os.path.basename(path)
    if "gnutls" in base or "gnutls_record_recv" in names:
        kind = Kind.GNUTLS
    elif "SSL_read" in names or "ssl" in base:
        kind = Kind.OPENSSL
    else:
        kind = Kind.UNKNOWN
    table = GNUTLS_PROBES if kind is Kind.GNUTLS else OPENSSL_PROBES
    present = tuple(f for f in table if f in names)
    missing = tuple(f for f in table if f not in names)
    shared = OPENSSL_SHARED if kind is Kind.OPENSSL else ()
    return TlsLibrary(
        os.path.realpath(path),
        kind,
        _version(path, kind),
        present,
        missing,
        stripped,
        plan_sites(table, shared, symbols, code),
    )


def system_libraries() -> list[str]:
    """The system's OpenSSL and GnuTLS shared libraries (from the dynamic linker's cache)."""
    try:
        out = subprocess.run(
            ["ldconfig", "-p"], capture_output=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = b""
    found: dict[str, None] = {}
    for m in _SONAMES.finditer(out):
        found[os.path.realpath(m.group(2).decode())] = None
    if not found:  # no ldconfig cache: the usual places
        for d in ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"):
            for name in ("libssl.so.3", "libssl.so.1.1", "libgnutls.so.30"):
                p = os.path.join(d, name)
                if os.path.exists(p):
                    found[os.path.realpath(p)] = None
    return list(found)


def process_libraries(pid: int) -> list[str]:
    """The TLS libraries process ``pid`` has mapped (a container's own copies included: the path
    is read through the process's root, /proc/PID/root)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            maps = f.read()
    except FileNotFoundError:
        raise InputError(f"no process {pid}", field="pid") from None
    except OSError as exc:
        raise InputError(f"cannot read its maps: {exc.strerror}", field="pid") from exc
    found: dict[str, None] = {}
    for line in maps.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and re.search(r"/lib(ssl\.so|gnutls\.so)[.\d]*$", parts[5]):
            path = parts[5]
            outside = f"/proc/{pid}/root{path}"
            found[outside if os.path.exists(outside) else path] = None
    return list(found)


def executable_has_tls(path: str) -> TlsLibrary | None:
    """A TLS library linked statically into an executable, if its symbols are exported."""
    lib = inspect(path)
    return lib if lib.usable else None


@dataclass(frozen=True, slots=True)
class BlindSpot:
    what: str
    reason: str


BLIND_SPOTS = (
    BlindSpot(
        "statically linked TLS (OpenSSL or others built into the executable)",
        "its functions are not in a shared library: name the executable with --tls-lib if it still "
        "exports SSL_read/SSL_write; a stripped one hides their addresses",
    ),
    BlindSpot(
        "BoringSSL (Envoy, Chrome, many Go/Rust builds)",
        "linked statically and stripped: no exported SSL_read/SSL_write to attach to",
    ),
    BlindSpot(
        "Go's crypto/tls",
        "implemented in Go, not in any C library; its functions follow Go's calling "
        "convention and goroutine stacks (uretprobes are unsafe with them)",
    ),
    BlindSpot(
        "rustls, Java's JSSE, Node's bundled OpenSSL",
        "their own TLS code, or a copy of OpenSSL inside the executable: not the system library",
    ),
    BlindSpot(
        "kernel TLS (kTLS, SSL_sendfile)",
        "the kernel encrypts: the bytes never pass through SSL_write",
    ),
)
