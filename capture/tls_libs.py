"""TLS libraries the TLS source can instrument, and what it cannot see.

uprobes attach to a function's address in a file: the library must export the functions (its
dynamic symbol table names them). Found here: the system's OpenSSL (libssl.so.3, .so.1.1) and
GnuTLS (libgnutls.so.30), a library named by the user (``--tls-lib``, e.g. a copy in a container's
root), or those a process has mapped (``--pid``). ``inspect`` says what a file is and whether the
functions are there; ``blind_spots`` what no uprobe on a shared library sees, with the reason.

Reads ELF files with pyelftools (no bcc needed, so `doctor` works where bcc is missing). Cost: one
pass over a library's dynamic symbols (a few thousand entries) per file.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from enum import Enum

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
_SONAMES = re.compile(
    rb"^\s*(libssl\.so\.(?:3|1\.1)|libgnutls\.so\.30)\s.*x86-64.*=>\s*(\S+)", re.M
)
_VERSION = re.compile(rb"(OpenSSL \d+\.\d+\.\d+[a-z]?(?:-\w+)? +\d+ \w+ \d{4})|(BoringSSL)")


@dataclass(frozen=True, slots=True)
class TlsLibrary:
    path: str
    kind: Kind
    version: str
    present: tuple[str, ...]  # probed functions the file exports
    missing: tuple[str, ...]  # probed functions it does not
    stripped: bool  # no .symtab (exports still work: uprobes need .dynsym only)

    @property
    def usable(self) -> bool:
        return all(f in self.present for f in REQUIRED.get(self.kind, ("?",)))

    @property
    def probes(self) -> dict[str, tuple[str, str | None]]:
        table = OPENSSL_PROBES if self.kind is Kind.OPENSSL else GNUTLS_PROBES
        return {f: p for f, p in table.items() if f in self.present}


def _dynamic_symbols(path: str) -> tuple[set[str], bool]:
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            dyn = elf.get_section_by_name(".dynsym")
            names: set[str] = set()
            if isinstance(dyn, SymbolTableSection):
                for sym in dyn.iter_symbols():
                    if sym["st_info"]["type"] == "STT_FUNC" and sym["st_shndx"] != "SHN_UNDEF":
                        names.add(sym.name.split("@", 1)[0])
            return names, elf.get_section_by_name(".symtab") is None
    except (OSError, ELFError) as exc:
        raise InputError(f"not a readable ELF library: {exc}", where=path) from exc


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
    names, stripped = _dynamic_symbols(path)
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
    return TlsLibrary(
        os.path.realpath(path), kind, _version(path, kind), present, missing, stripped
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
