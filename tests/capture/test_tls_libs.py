"""What the TLS source can instrument and what `doctor` says about it, on this machine's real
libraries (the system's OpenSSL, an executable that is no TLS library)."""

from __future__ import annotations

import shutil

from shadowtap.capture import doctor, tls_libs
from tests.support.prereq import require


def test_system_openssl_is_found_with_its_version_and_functions():
    paths = tls_libs.system_libraries()
    ssl = [p for p in paths if "libssl" in p]
    require(bool(ssl), "the system's libssl")
    lib = tls_libs.inspect(ssl[0])
    assert lib.kind is tls_libs.Kind.OPENSSL and lib.usable
    assert lib.version.startswith("OpenSSL ")
    assert {"SSL_read", "SSL_write", "SSL_read_ex", "SSL_write_ex"} <= set(lib.present)
    assert set(lib.probes) == set(lib.present)


def test_an_executable_without_tls_is_not_usable():
    true = shutil.which("true")
    require(true is not None, "the true command")
    lib = tls_libs.inspect(true)
    assert not lib.usable and "SSL_read" in lib.missing


def test_doctor_lists_libraries_tracepoints_and_blind_spots():
    checks = doctor.check_tls()
    names = [c.name for c in checks]
    assert any(n.startswith("TLS library ") for n in names)
    assert "TLS tracepoints" in names
    blind = [c for c in checks if c.name.startswith("not seen: ")]
    text = " ".join(c.name for c in blind)
    assert "BoringSSL" in text and "Go's crypto/tls" in text
    assert all(c.detail for c in blind)  # each with its reason


def test_a_stale_tracefs_uprobe_of_a_dead_run_is_removed():
    """bcc falls back to tracefs uprobe_events on kernels without the uprobe PMU, naming the probes
    after its pid; a killed run leaves them, and the next run removes those of dead pids (here: one
    planted in the kernel's list, named as bcc would for a pid that does not exist)."""
    import os

    from shadowtap.capture.tls import UPROBE_EVENTS, remove_stale_uprobes
    from tests.support.prereq import require_root

    require_root()
    events = UPROBE_EVENTS[0]
    require(os.path.exists(events), "tracefs uprobe_events")
    lib = [p for p in tls_libs.system_libraries() if "libssl" in p]
    require(bool(lib), "the system's libssl")
    dead = 4_000_000 + os.getpid() % 100_000  # above pid_max's default: never a live process
    name = f"p_shadowtap_test_0x0_bcc_{dead}"
    from elftools.elf.elffile import ELFFile

    with open(lib[0], "rb") as f:
        dynsym = ELFFile(f).get_section_by_name(".dynsym")
        offset = next(s["st_value"] for s in dynsym.iter_symbols() if s.name == "SSL_read")

    def append(line: str) -> None:  # O_APPEND without a seek (tracefs refuses Python's "a" mode)
        fd = os.open(events, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    append(f"p:uprobes/{name} {lib[0]}:{offset:#x}\n")
    try:
        assert name in open(events).read()
        assert name in remove_stale_uprobes()
        assert name not in open(events).read()
    finally:
        if name in open(events).read():
            append(f"-:uprobes/{name}\n")
