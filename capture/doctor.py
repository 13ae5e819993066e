"""`shadowtap doctor`: every prerequisite of live capture, each with the command that fixes it.

The same checks guard the backends: ``require_ebpf`` and ``require_pcap`` raise the first missing
prerequisite as a PrerequisiteError (with its fix as the hint), so `capture` fails with the message
`doctor` would print. Checks read /proc and /sys and probe bpf(2); they change nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gzip
import os
from dataclasses import dataclass
from enum import Enum

from shadowtap.errors import PrerequisiteError

CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 12, 13, 21, 38, 39
_CAP_NAMES = {
    CAP_NET_ADMIN: "CAP_NET_ADMIN",
    CAP_NET_RAW: "CAP_NET_RAW",
    CAP_PERFMON: "CAP_PERFMON",
    CAP_BPF: "CAP_BPF",
}
EBPF_CAPS = (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN)
PCAP_CAPS = (CAP_NET_RAW,)
SETUP_FIX = "scripts/setup.sh (as root, from the shadowtap checkout)"


class Status(Enum):
    OK = "ok"
    WARN = "warn"  # works, in a lesser way (e.g. perf buffer instead of ring buffer)
    MISSING = "missing"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""
    needed_by: str = "ebpf"  # "ebpf", "pcap", "both" or "tls"


def effective_capabilities() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def missing_capabilities(caps: tuple[int, ...]) -> list[str]:
    have = effective_capabilities()
    # Before Linux 5.8 CAP_SYS_ADMIN stood for CAP_BPF and CAP_PERFMON.
    sys_admin = bool(have >> CAP_SYS_ADMIN & 1)
    return [
        _CAP_NAMES[c]
        for c in caps
        if not have >> c & 1 and not (sys_admin and c in (CAP_BPF, CAP_PERFMON))
    ]


def _caps_check(caps: tuple[int, ...], backend: str) -> Check:
    missing = missing_capabilities(caps)
    who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    if not missing:
        return Check(
            f"privileges ({backend})", Status.OK, f"{who}, capabilities present", needed_by=backend
        )
    return Check(
        f"privileges ({backend})",
        Status.MISSING,
        f"{who}, missing {', '.join(missing)}",
        f"run as root (sudo shadowtap ...), or grant {', '.join(missing)} to the process "
        f"(systemd: AmbientCapabilities={' '.join(missing)})",
        needed_by=backend,
    )


def check_bcc() -> Check:
    try:
        import bcc
    except ImportError as exc:
        return Check(
            "bcc (Python bindings)",
            Status.MISSING,
            str(exc),
            f"apt-get install python3-bpfcc bpfcc-tools, then {SETUP_FIX}",
        )
    except (OSError, AttributeError) as exc:  # libbcc present but broken
        return Check(
            "bcc (Python bindings)",
            Status.MISSING,
            f"import failed: {exc}",
            "apt-get install --reinstall libbpfcc python3-bpfcc",
        )
    return Check("bcc (Python bindings)", Status.OK, os.path.dirname(bcc.__file__))


def check_headers() -> Check:
    release = os.uname().release
    if os.environ.get("BCC_KERNEL_SOURCE"):
        path = os.environ["BCC_KERNEL_SOURCE"]
    else:
        path = f"/lib/modules/{release}/build"
    if os.path.isdir(os.path.join(path, "include")):
        return Check("kernel headers", Status.OK, os.path.realpath(path))
    return Check(
        "kernel headers",
        Status.MISSING,
        f"{path}/include not found (bcc compiles against them)",
        f"apt-get install linux-headers-{release}  (or {SETUP_FIX}, which links the "
        "distribution's)",
    )


def check_tracefs() -> Check:
    if os.path.ismount("/sys/kernel/tracing") or os.path.exists(
        "/sys/kernel/debug/tracing/trace_pipe"
    ):
        return Check("tracefs", Status.OK, "/sys/kernel/tracing")
    return Check(
        "tracefs",
        Status.WARN,
        "not mounted (TC capture does not need it; bcc's tracing tools do)",
        "mount -t tracefs tracefs /sys/kernel/tracing",
    )


def _kernel_config() -> dict[str, str]:
    for path in ("/proc/config.gz", f"/boot/config-{os.uname().release}"):
        try:
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt") as f:  # type: ignore[operator]
                return dict(line.strip().split("=", 1) for line in f if line.startswith("CONFIG_"))
        except OSError:
            continue
    return {}


# Probes: pure checks of what this machine has (no source is imported: the sources import them).
_BPF_MAP_CREATE = 0
_BPF_MAP_TYPE_RINGBUF = 27
_SYS_BPF = 321  # x86_64; other architectures go through bcc's probe below


def ringbuf_supported() -> bool:
    """True when the kernel can create a BPF ring buffer map (Linux 5.8+): a direct bpf(2) probe,
    no compilation. False also when bpf(2) is refused (no privilege): the caller checks that."""
    if os.uname().machine != "x86_64":
        return False  # capture/ringbuf.py's reader relies on x86-64's memory ordering
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    attr = (ctypes.c_uint32 * 30)()  # union bpf_attr, zeroed; MAP_CREATE reads the first fields
    attr[0], attr[1], attr[2], attr[3] = _BPF_MAP_TYPE_RINGBUF, 0, 0, 4096
    fd = libc.syscall(_SYS_BPF, _BPF_MAP_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        return False
    os.close(fd)
    return True


_SONAMES = ("libpcap.so.0.8", "libpcap.so.1", "libpcap.so")


def libpcap_name() -> str | None:
    """The loadable libpcap, or None. find_library runs ldconfig (which fails where /dev/null is
    not writable, as for an unprivileged user on some hosts), so known sonames are tried too."""
    for name in (ctypes.util.find_library("pcap"), *_SONAMES):
        if name:
            try:
                ctypes.CDLL(name)
            except OSError:
                continue
            return name
    return None


def check_clsact() -> Check:
    config = _kernel_config()
    wanted = (
        "CONFIG_NET_SCH_INGRESS",
        "CONFIG_NET_CLS_BPF",
        "CONFIG_NET_CLS_ACT",
        "CONFIG_BPF_SYSCALL",
    )
    if not config:
        return Check(
            "clsact + cls_bpf",
            Status.WARN,
            "kernel configuration not readable; assumed present",
            "modprobe sch_ingress cls_bpf",
        )
    missing = [w for w in wanted if config.get(w) not in ("y", "m")]
    if missing:
        return Check(
            "clsact + cls_bpf",
            Status.MISSING,
            f"kernel built without {', '.join(missing)}",
            "use --backend pcap (this kernel cannot run TC BPF classifiers)",
        )
    return Check("clsact + cls_bpf", Status.OK, ", ".join(f"{w[7:]}={config[w]}" for w in wanted))


def check_ringbuf() -> Check:
    if missing_capabilities((CAP_BPF,)):
        return Check("BPF ring buffer", Status.WARN, "not probed (no CAP_BPF)", "run as root")
    if ringbuf_supported():
        return Check("BPF ring buffer", Status.OK, "available (Linux 5.8+)")
    if os.uname().machine != "x86_64":
        return Check(
            "BPF ring buffer",
            Status.WARN,
            "not used on this CPU: the perf buffer is (per CPU); shadowtap's ring buffer reader "
            "relies on x86-64's memory ordering (capture/ringbuf.py)",
        )
    return Check(
        "BPF ring buffer",
        Status.WARN,
        "unavailable: the perf buffer is used instead (per CPU)",
        "a Linux 5.8+ kernel",
    )


def check_libpcap() -> Check:
    lib = libpcap_name()
    if lib:
        return Check("libpcap", Status.OK, lib, needed_by="pcap")
    return Check(
        "libpcap", Status.MISSING, "not found", "apt-get install libpcap0.8", needed_by="pcap"
    )


def check_interface(iface: str) -> Check:
    base = f"/sys/class/net/{iface}"
    if not os.path.isdir(base):
        return Check(
            f"interface {iface}",
            Status.MISSING,
            "no such interface in this network namespace",
            "pick one from: ip -brief link  (or run inside its namespace: ip netns exec NS ...)",
            needed_by="both",
        )
    with open(f"{base}/operstate") as f:
        state = f.read().strip()
    with open(f"{base}/mtu") as f:
        mtu = f.read().strip()
    up = state in ("up", "unknown")  # loopback and some virtual links report "unknown"
    return Check(
        f"interface {iface}",
        Status.OK if up else Status.WARN,
        f"state {state}, mtu {mtu}",
        "" if up else f"ip link set {iface} up",
        needed_by="both",
    )


def check_tls() -> list[Check]:
    """The TLS source's view: each TLS library found (version, whether the probed functions are
    exported), the tracepoints it needs, and what no uprobe on a shared library sees, with why."""
    from shadowtap.capture import tls_libs
    from shadowtap.errors import InputError

    checks = []
    for path in tls_libs.system_libraries():
        try:
            lib = tls_libs.inspect(path)
        except InputError as exc:
            checks.append(Check(f"TLS library {path}", Status.WARN, exc.reason, needed_by="tls"))
            continue
        exports = ", ".join(lib.present) or "none of the probed functions"
        what = f"{lib.version or lib.kind.value}; exports {exports}"
        if lib.missing:
            what += f"; lacks {', '.join(lib.missing)}"
        stepped = [f for site in lib.sites if site.stepped for f in site.observes]
        if stepped:  # a second trap a call (~17 us in a VM, measured: docs/benchmarks.md)
            what += f"; single-stepped probes: {', '.join(stepped)}"
        if lib.usable:
            checks.append(Check(f"TLS library {lib.path}", Status.OK, what, needed_by="tls"))
        else:
            checks.append(
                Check(
                    f"TLS library {lib.path}",
                    Status.WARN,
                    what + ": cannot be instrumented",
                    "a build that exports SSL_read/SSL_write",
                    needed_by="tls",
                )
            )
    if not any(c.status is Status.OK for c in checks):
        checks.append(
            Check(
                "TLS libraries",
                Status.MISSING,
                "no usable OpenSSL or GnuTLS shared library found",
                "name one with --tls-lib PATH",
                needed_by="tls",
            )
        )
    base = "/sys/kernel/tracing/events"
    if not os.path.isdir(base):
        base = "/sys/kernel/debug/tracing/events"
    needed = (
        "sock/inet_sock_set_state",
        "sock/sock_recv_length",
        "sock/sock_send_length",
        "syscalls/sys_enter_read",
        "syscalls/sys_enter_write",
    )
    gone = [t for t in needed if not os.path.isdir(f"{base}/{t}")]
    if gone:
        checks.append(
            Check(
                "TLS tracepoints",
                Status.MISSING,
                f"missing {', '.join(gone)} (Linux 6.3+ has the sock length tracepoints)",
                "a newer kernel, with tracefs mounted",
                needed_by="tls",
            )
        )
    else:
        checks.append(Check("TLS tracepoints", Status.OK, ", ".join(needed), needed_by="tls"))
    for spot in tls_libs.BLIND_SPOTS:
        checks.append(Check(f"not seen: {spot.what}", Status.WARN, spot.reason, needed_by="tls"))
    return checks


def run_checks(iface: str | None = None) -> list[Check]:
    checks = [
        _caps_check(EBPF_CAPS, "ebpf"),
        _caps_check(PCAP_CAPS, "pcap"),
        check_bcc(),
        check_headers(),
        check_clsact(),
        check_ringbuf(),
        check_tracefs(),
        check_libpcap(),
    ]
    if iface:
        checks.append(check_interface(iface))
    return checks + check_tls()


def _raise_first(checks: list[Check]) -> None:
    for c in checks:
        if c.status is Status.MISSING:
            raise PrerequisiteError(f"{c.name}: {c.detail}", hint=c.fix or None)


def require_ebpf() -> None:
    """Raise the first missing prerequisite of the eBPF backend."""
    _raise_first([_caps_check(EBPF_CAPS, "ebpf"), check_bcc(), check_headers(), check_clsact()])


def require_pcap() -> None:
    """Raise the first missing prerequisite of the pcap backend."""
    _raise_first([_caps_check(PCAP_CAPS, "pcap"), check_libpcap()])


def doctor(iface: str | None = None) -> int:
    """The stage function behind `shadowtap doctor`: print the checks; the exit code is 0 when
    both backends can run, 4 (missing prerequisite) when either cannot."""
    from shadowtap.console import out, table  # rich, loaded only to print (the checks need none)

    checks = run_checks(iface)
    marks = {Status.OK: "ok", Status.WARN: "warn", Status.MISSING: "MISSING"}
    table(
        "shadowtap doctor",
        ("check", "status", "detail", "fix"),
        [(c.name, marks[c.status], c.detail, c.fix) for c in checks],
    )
    blocked = {
        b
        for c in checks
        if c.status is Status.MISSING
        for b in (("ebpf", "pcap") if c.needed_by == "both" else (c.needed_by,))
    }
    for backend in ("ebpf", "pcap", "tls"):
        out.print(
            f"{backend} backend: {'not available' if backend in blocked else 'ready'}", markup=False
        )
    # The exit code speaks for the two packet backends; the TLS source's readiness is printed.
    return 4 if blocked & {"ebpf", "pcap"} else 0
