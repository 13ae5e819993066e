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
