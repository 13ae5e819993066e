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
    # every probed function is observed by exactly one site
    observed = [f for site in lib.sites for f in site.observes]
    assert sorted(observed) == sorted(lib.present)
    # this machine's OpenSSL 3: the read and write probes sit on the wrappers' common callees,
    # whose first instruction the kernel emulates (no single step: ~0.5 us a call, not ~17)
    rw = [s for s in lib.sites if {"SSL_read", "SSL_write"} & set(s.observes)]
    assert [s.observes for s in rw] == [("SSL_read", "SSL_read_ex"), ("SSL_write", "SSL_write_ex")]
    assert not any(s.stepped for s in rw)


def _call(at: int, target: int) -> bytes:
    return b"\xe8" + (target - (at + 5)).to_bytes(4, "little", signed=True)


SUB8, SUB24, PUSH_R13, RET = b"\x48\x83\xec\x08", b"\x48\x83\xec\x18", b"\x41\x55", b"\xc3"


def _plan(callee_head: bytes, plain_calls: bool = True, endbr: bool = False):
    """OpenSSL-shaped wrappers, crafted: SSL_read_ex at 0x1000 = [endbr64] sub; call 0x2000;
    SSL_read at 0x1100 = sub; call 0x2000 (or elsewhere); the callee starts with ``callee_head``."""
    head = (b"\xf3\x0f\x1e\xfa" if endbr else b"") + SUB8
    ex = head + _call(0x1000 + len(head), 0x2000) + RET
    plain = SUB24 + _call(0x1104, 0x2000 if plain_calls else 0x3000) + RET
    code = {0x1000: ex, 0x1100: plain, 0x2000: callee_head + RET}
    symbols = {"SSL_read_ex": (0x1000, len(ex)), "SSL_read": (0x1100, len(plain))}
    return tls_libs.plan_sites(
        tls_libs.OPENSSL_PROBES,
        tls_libs.OPENSSL_SHARED,
        symbols,
        lambda addr, n: code.get(addr, b"")[:n],
    )


def test_read_probes_go_on_the_common_callee_when_its_first_instruction_is_emulated():
    for endbr in (False, True):
        (site,) = _plan(PUSH_R13, endbr=endbr)
        assert (site.addr, site.entry, site.ret) == (0x2000, "enter_read_ex", "leave_call")
        assert site.observes == ("SSL_read", "SSL_read_ex") and not site.stepped


def test_read_probes_stay_on_each_entry_otherwise():
    # the callee would be single-stepped too (nothing gained), or SSL_read does not call it
    for sites in (_plan(SUB24 + PUSH_R13), _plan(PUSH_R13, plain_calls=False)):
        assert sorted((s.observes, s.addr, s.entry, s.stepped) for s in sites) == [
            (("SSL_read",), 0x1100, "enter_read", True),
            (("SSL_read_ex",), 0x1000, "enter_read_ex", True),
        ]


def test_which_instructions_the_kernel_emulates():
    yes = [
        b"\x53",
        b"\x41\x57",
        b"\x90",
        _call(0, 64),
        b"\xeb\x10",
        b"\x74\x02",
        b"\x0f\x84\x07\x03\x00\x00",
        b"\xe9\x00\x00\x00\x00",
    ]
    no = [SUB8, b"\x48\x85\xff", b"\xf3\x0f\x1e\xfa", b"\x45\x31\xc0", b""]
    assert all(tls_libs.emulated(i) for i in yes)
    assert not any(tls_libs.emulated(i) for i in no)


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


def test_an_entry_only_probe_moves_to_the_first_emulated_instruction_after_flag_only_ones():
    """SSL_free has no return probe: ``test %rdi,%rdi; je`` is probed at the je (emulated, the
    argument untouched); a function whose first instruction writes a register stays at its entry."""

    def plan(body: bytes):
        symbols = {"SSL_free": (0x4000, len(body))}
        return tls_libs.plan_sites(
            {"SSL_free": ("enter_free", None)},
            (),
            symbols,
            lambda a, n: body[:n] if a == 0x4000 else b"",
        )

    (site,) = plan(b"\x48\x85\xff" + b"\x74\x05" + RET)
    assert (site.addr, site.stepped) == (0x4003, False)
    (site,) = plan(b"\x48\x89\xfb" + b"\x74\x05" + RET)  # mov %rdi,%rbx first
    assert (site.addr, site.stepped) == (0x4000, True)


def test_a_leading_endbr64_is_stepped_over():
    """CET builds open every function with endbr64 (not emulated, but it changes nothing): the
    probe goes on the instruction after it, the callee's push here."""
    (site,) = _plan(b"\xf3\x0f\x1e\xfa" + PUSH_R13, endbr=True)
    assert (site.addr, site.stepped, site.observes) == (0x2004, False, ("SSL_read", "SSL_read_ex"))
