"""The one-host lab: three network namespaces and the demo service in two of them.

    lab.py up|down|status|env [--prefix stlab] [--port 8080] [--run-dir /run/shadowtap-lab] [--json]

Topology (a triangle of veth pairs, so no namespace routes for another; addresses only inside the
namespaces ``<prefix>-client``, ``<prefix>-primary``, ``<prefix>-shadow``):

    client  to-primary 10.250.70.1/24 ──── to-client 10.250.70.2/24  primary (demo service v1)
    client  to-shadow  10.250.72.1/24 ──── to-client 10.250.72.2/24  shadow  (demo service v2)
    primary to-shadow  10.250.71.1/24 ──── to-primary 10.250.71.2/24 shadow

The primary's ``to-client`` interface carries only the client's traffic: that is where the mirror
captures, and its copies go to the shadow over ``to-shadow``, never through the captured link.

``up`` first removes whatever an earlier lab with the same prefix left (also after a crash or a
half-finished ``up``), records what it makes in ``<run-dir>/<prefix>/`` (state.json, one PID file
per service, the services' logs) and on any failure removes what it made before raising.
``down`` stops the services by their PID (checked to still be this lab's service), then stops any
other process of ours (scripts/lab/*.py) left in the lab's namespaces, deletes the namespaces
(their veth ends go with them), any veth a crashed ``up`` left in the root namespace, and the run
directory. ``status`` reports what exists and whether the services answer from the client.

Needs root and iproute2. The Python API (``up``, ``down``, ``status``) serves ``scripts/lab.sh``,
the demo and the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shadowtap import netns
from shadowtap.errors import PrerequisiteError, ShadowtapError

HERE = Path(__file__).resolve().parent

DEFAULT_PREFIX = "stlab"
DEFAULT_PORT = 8080
DEFAULT_RUN_DIR = Path("/run/shadowtap-lab")
SERVICE_SCRIPT = HERE / "demo_service.py"
OUR_SCRIPTS = ("demo_service.py", "traffic.py")  # processes of ours that down may stop

# (host a, host b, interface in a, interface in b, address of a, address of b)
LINKS = (
    ("client", "primary", "to-primary", "to-client", "10.250.70.1", "10.250.70.2"),
    ("primary", "shadow", "to-shadow", "to-primary", "10.250.71.1", "10.250.71.2"),
    ("client", "shadow", "to-shadow", "to-client", "10.250.72.1", "10.250.72.2"),
)
HOSTS = ("client", "primary", "shadow")
SERVICES = {"primary": 1, "shadow": 2}  # namespace role -> demo service version
# Fixed addresses (the lab's namespaces are private, so several labs can use the same ones):
PRIMARY_ADDR = "10.250.70.2"  # the primary as the client sees it
SHADOW_ADDR_FROM_PRIMARY = "10.250.71.2"
SHADOW_ADDR_FROM_CLIENT = "10.250.72.2"
PRIMARY_CAPTURE_IF = "to-client"  # the primary's interface facing the client
READY_TIMEOUT = 30.0
ACTIONS = ("up", "down", "status", "env")


@dataclass
class Lab:
    prefix: str = DEFAULT_PREFIX
    port: int = DEFAULT_PORT
    run_dir: Path = DEFAULT_RUN_DIR
    python: str = sys.executable

    @property
    def dir(self) -> Path:
        return self.run_dir / self.prefix

    def ns(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    def env(self) -> dict[str, str]:
        """Shell variables describing the lab (``lab.py env``; the demo evals them)."""
        return {
            "LAB_PREFIX": self.prefix,
            "LAB_CLIENT_NS": self.ns("client"),
            "LAB_PRIMARY_NS": self.ns("primary"),
            "LAB_SHADOW_NS": self.ns("shadow"),
            "LAB_PRIMARY_IF": PRIMARY_CAPTURE_IF,
            "LAB_PORT": str(self.port),
            "LAB_PRIMARY_URL": f"http://{PRIMARY_ADDR}:{self.port}",
            "LAB_SHADOW_URL": f"http://{SHADOW_ADDR_FROM_PRIMARY}:{self.port}",
            "LAB_SHADOW_URL_FROM_CLIENT": f"http://{SHADOW_ADDR_FROM_CLIENT}:{self.port}",
            "LAB_RUN_DIR": str(self.dir),
        }


@dataclass
class DownReport:
    stopped: list[str] = field(default_factory=list)  # "pid (what)"
    left_running: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    run_dir_removed: bool = False

    def empty(self) -> bool:
        return not (self.stopped or self.namespaces or self.links or self.run_dir_removed)


# --- processes ------------------------------------------------------------------------------------


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _is_ours(pid: int, lab: Lab) -> bool:
    """True if ``pid`` runs one of our scripts for this lab (not a recycled PID)."""
    argv = _cmdline(pid)
    if not any(Path(a).name in OUR_SCRIPTS for a in argv):
        return False
    return any(a.startswith(f"{lab.prefix}-") for a in argv) or _in_lab_namespace(pid, lab)


def _in_lab_namespace(pid: int, lab: Lab) -> bool:
    try:
        mine = os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return False
    for role in HOSTS:
        try:
            if os.stat(f"/run/netns/{lab.ns(role)}").st_ino == mine:
                return True
        except OSError:
            continue
    return False


def _stop(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; returns when the process is gone."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            # our own children must be reaped, other processes just disappear
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        if not Path(f"/proc/{pid}").exists() or _zombie(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _namespace_pids(ns: str) -> list[int]:
    proc = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False)
    return [int(x) for x in proc.stdout.split() if x.isdigit()]


# --- down -----------------------------------------------------------------------------------------


def down(lab: Lab) -> DownReport:
    """Remove everything ``up`` made for ``lab.prefix``; safe to run at any time, any number of
    times (also when nothing or only part of the lab exists)."""
    netns.check_prerequisites()
    report = DownReport()
    state = _read_state(lab)
    if state and state.get("fleet"):  # a fleet lab (fleet.py): its agents, broker and stores
        from shadowtap.lab import fleet

        fleet.stop(lab, report)
    # 1. the services, by their PID files
    for pidfile in sorted(lab.dir.glob("*.pid")) if lab.dir.is_dir() else ():
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            continue
        if _is_ours(pid, lab):
            _stop(pid)
            report.stopped.append(f"{pid} ({pidfile.stem})")
    # 2. anything else of ours still inside the lab's namespaces (a crash lost its PID file)
    existing = set(netns.list_namespaces())
    for role in HOSTS:
        if lab.ns(role) not in existing:
            continue
        for pid in _namespace_pids(lab.ns(role)):
            if pid == os.getpid():
                continue
            argv = _cmdline(pid)
            if _is_ours(pid, lab):
                script = next((Path(a).name for a in argv if Path(a).name in OUR_SCRIPTS), "ours")
                _stop(pid)
                report.stopped.append(f"{pid} ({script} in {lab.ns(role)})")
            elif argv:
                report.left_running.append(f"{pid} in {lab.ns(role)}: {' '.join(argv)[:120]}")
    # 3. the namespaces (their veth ends and addresses go with them)
    report.namespaces = netns.remove_stale(lab.prefix)
    # 4. veth pairs a crashed ``up`` created but had not yet moved into a namespace
    creator = state.get("creator_pid") if state else None
    if isinstance(creator, int):
        for n in range(1, len(LINKS) + 1):
            for side in ("sta", "stb"):
                name = f"{side}{creator % 100000}x{n}"
                probe = subprocess.run(
                    ["ip", "-o", "link", "show", "dev", name],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if probe.returncode == 0 and "veth" in _link_kind(name):
                    subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
                    report.links.append(name)
    # 5. the run directory (state, PID files, ready files, logs)
    if lab.dir.is_dir():
        for f in lab.dir.iterdir():
            f.unlink(missing_ok=True)
        lab.dir.rmdir()
        report.run_dir_removed = True
    return report


def _link_kind(name: str) -> str:
    proc = subprocess.run(
        ["ip", "-d", "-o", "link", "show", "dev", name], capture_output=True, text=True, check=False
    )
    return proc.stdout


# --- up -------------------------------------------------------------------------------------------


def _read_state(lab: Lab) -> dict[str, object] | None:
    try:
        return json.loads((lab.dir / "state.json").read_text())
    except (OSError, ValueError):
        return None


def _write_state(lab: Lab, state: dict[str, object]) -> None:
    tmp = lab.dir / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(lab.dir / "state.json")


def _health_from(host: netns.Host, python: str, url: str, timeout: float = 3.0) -> tuple[bool, str]:
    """GET ``url`` from inside ``host``'s namespace: (answered 200, detail)."""
    code = (
        "import sys, urllib.request\n"
        "try:\n"
        f"    r = urllib.request.urlopen(sys.argv[1], timeout={timeout})\n"
        "    print(r.status)\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    try:
        proc = host.run([python, "-c", code, url], check=False, timeout=timeout + 10)
    except subprocess.TimeoutExpired:
        return False, "timed out"
    detail = (proc.stdout.strip() or proc.stderr.strip())[:200]
    return detail == "200", detail


def up(lab: Lab) -> dict[str, object]:
    """Build the lab (after removing any leftover of the same prefix); returns its state."""
    netns.check_prerequisites()
    if not SERVICE_SCRIPT.is_file():
        raise PrerequisiteError(
            f"{SERVICE_SCRIPT} is missing", hint="run from a shadowtap checkout"
        )
    down(lab)
    lab.dir.mkdir(parents=True, exist_ok=True)
    os.chmod(lab.dir, 0o700)
    state: dict[str, object] = {
        "prefix": lab.prefix,
        "port": lab.port,
        "creator_pid": os.getpid(),
        "phase": "starting",
        "started_at": time.time(),
    }
    _write_state(lab, state)
    try:
        hosts = _topology(lab, HOSTS, LINKS)
        state["hosts"] = {
            role: {"ns": h.ns, "interfaces": dict(h.addrs)} for role, h in hosts.items()
        }
        services: dict[str, dict[str, object]] = {}
        for role, version in SERVICES.items():
            services[role] = _start_service(lab, hosts[role], role, version)
        state["services"] = services
        _write_state(lab, state)
        _wait_ready(lab, hosts)
        state["phase"] = "up"
        _write_state(lab, state)
        return state
    except BaseException:
        down(lab)
        raise


def _topology(
    lab: Lab, roles: Sequence[str], links: Sequence[tuple[str, str, str, str, str, str]]
) -> dict[str, netns.Host]:
    """The namespaces ``<prefix>-<role>`` and the veth pairs of ``links`` (host a, host b,
    interface in a, interface in b, address of a, address of b), interfaces renamed as given."""
    topo = netns.Topology(lab.prefix)
    hosts = {role: topo.host(role) for role in roles}
    for a, b, if_a, if_b, addr_a, addr_b in links:
        made = topo.link(hosts[a], hosts[b], addr_a, addr_b)
        for host, old, new in ((hosts[a], made[0], if_a), (hosts[b], made[1], if_b)):
            host.run(["ip", "link", "set", old, "down"])
            host.run(["ip", "link", "set", old, "name", new])
            host.run(["ip", "link", "set", new, "up"])
            host.addrs[new] = host.addrs.pop(old)
    # the Topology object is dropped without close(): the lab outlives this process
    return hosts


def _start_service(lab: Lab, host: netns.Host, role: str, version: int) -> dict[str, object]:
    argv = [
        lab.python,
        str(SERVICE_SCRIPT),
        "--version",
        str(version),
        "--host",
        "0.0.0.0",
        "--port",
        str(lab.port),
        "--name",
        host.ns,
        "--ready-file",
        str(lab.dir / f"{role}.ready"),
    ]
    pid = _spawn(lab, host, role, argv)
    return {
        "pid": pid,
        "version": version,
        "port": lab.port,
        "log": str(lab.dir / f"{role}.log"),
    }


def _spawn(lab: Lab, host: netns.Host, stem: str, argv: list[str]) -> int:
    """Start ``argv`` in ``host``'s namespace in a session of its own, its output to
    ``<run dir>/<stem>.log``, its PID to ``<stem>.pid``; returns the PID."""
    log = open(lab.dir / f"{stem}.log", "ab")  # noqa: SIM115 (handed to the child)
    try:
        proc = host.popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        log.close()
    # ``ip netns exec`` execs the command: this PID is the program's own
    (lab.dir / f"{stem}.pid").write_text(f"{proc.pid}\n")
    return proc.pid


def _wait_ready(lab: Lab, hosts: dict[str, netns.Host]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    for role in SERVICES:
        ready = lab.dir / f"{role}.ready"
        pid = int((lab.dir / f"{role}.pid").read_text())
        while not ready.exists():
            if not Path(f"/proc/{pid}").exists() or _zombie(pid):
                log = (lab.dir / f"{role}.log").read_text(errors="replace")[-2000:]
                raise ShadowtapError(f"the {role} demo service exited while starting:\n{log}")
            if time.monotonic() > deadline:
                raise ShadowtapError(
                    f"the {role} demo service did not start within {READY_TIMEOUT:.0f} s "
                    f"(log: {lab.dir / f'{role}.log'})"
                )
            time.sleep(0.05)
    env = lab.env()
    for role, url in (
        ("primary", env["LAB_PRIMARY_URL"]),
        ("shadow", env["LAB_SHADOW_URL_FROM_CLIENT"]),
    ):
        ok, detail = _health_from(hosts["client"], lab.python, url + "/health")
        if not ok:
            raise ShadowtapError(
                f"the {role} service does not answer {url}/health from the client: {detail}"
            )


# --- status ---------------------------------------------------------------------------------------


def status(lab: Lab, *, probe: bool = True) -> dict[str, object]:
    """What exists of the lab: namespaces with their addresses, services with PID and health."""
    netns.check_prerequisites()
    existing = set(netns.list_namespaces())
    state = _read_state(lab) or {}
    namespaces: dict[str, object] = {}
    for role in HOSTS:
        ns = lab.ns(role)
        if ns not in existing:
            namespaces[role] = None
            continue
        proc = subprocess.run(
            ["ip", "-n", ns, "-j", "addr", "show"], capture_output=True, text=True, check=False
        )
        addrs = {}
        for link in json.loads(proc.stdout or "[]"):
            if link.get("ifname") == "lo":
                continue
            addrs[link["ifname"]] = [
                a["local"] for a in link.get("addr_info", []) if a.get("family") == "inet"
            ]
        namespaces[role] = {"ns": ns, "interfaces": addrs}
    services: dict[str, dict[str, Any]] = {}
    client = netns.Host(lab.ns("client"))
    env = lab.env()
    urls = {"primary": env["LAB_PRIMARY_URL"], "shadow": env["LAB_SHADOW_URL_FROM_CLIENT"]}
    for role, version in SERVICES.items():
        pid = None
        try:
            pid = int((lab.dir / f"{role}.pid").read_text())
        except (OSError, ValueError):
            pass
        running = pid is not None and _is_ours(pid, lab) and not _zombie(pid)
        health = None
        if probe and running and namespaces.get("client"):
            health = _health_from(client, lab.python, urls[role] + "/health")[1]
        services[role] = {
            "pid": pid if running else None,
            "version": version,
            "url": urls[role],
            "health": health,
        }
    complete = all(namespaces.values()) and all(
        s["pid"] and (not probe or s["health"] == "200") for s in services.values()
    )
    anything = (
        any(namespaces.values()) or any(s["pid"] for s in services.values()) or lab.dir.exists()
    )
    return {
        "prefix": lab.prefix,
        "state": "up" if complete else ("partial" if anything else "down"),
        "phase": state.get("phase"),
        "namespaces": namespaces,
        "services": services,
        "run_dir": str(lab.dir),
        "env": env,
    }


# --- command line ---------------------------------------------------------------------------------


def _print_status(st: dict[str, object]) -> None:
    from shadowtap.console import table

    namespaces = st["namespaces"]
    services = st["services"]
    assert isinstance(namespaces, dict) and isinstance(services, dict)
    rows = []
    for role, info in namespaces.items():
        if info is None:
            rows.append((role, "-", "absent", ""))
            continue
        ifs = ", ".join(f"{i} {'/'.join(a)}" for i, a in info["interfaces"].items())
        svc = services.get(role)
        what = ""
        if svc:
            what = (
                f"demo v{svc['version']} pid {svc['pid']} {svc['url']} health={svc['health']}"
                if svc["pid"]
                else f"demo v{svc['version']} NOT RUNNING"
            )
        rows.append((role, info["ns"], ifs, what))
    table(
        f"lab {st['prefix']}: {st['state']}", ("host", "namespace", "interfaces", "service"), rows
    )


def _fleet_size(lab: Lab) -> int:
    n = (_read_state(lab) or {}).get("fleet")
    return n if isinstance(n, int) else 0


def run(
    action: str,
    lab: Lab,
    *,
    as_json: bool = False,
    fleet: int = 0,
    fleet_options: dict[str, Any] | None = None,
) -> int:
    """One command (up, down, status, env) with its output; the exit status (status and up: 0 when
    the lab is up and answers, else 1). Raises ShadowtapError (``shadowtap lab`` reports it).
    ``fleet``: N primaries with capture agents, a broker and a shadow (fleet.py; status, env and
    down know a fleet from its state)."""
    if fleet or (action in ("status", "env") and _fleet_size(lab)):  # the fleet lab (fleet.py)
        from shadowtap.lab import fleet as fleet_lab

        return fleet_lab.run(
            action, lab, fleet or _fleet_size(lab), as_json=as_json, **(fleet_options or {})
        )
    if action == "env":
        for k, v in lab.env().items():
            print(f"{k}={v}")
        return 0
    if action == "down":
        report = down(lab)
        if as_json:
            print(json.dumps(report.__dict__))
            return 0
        print(f"lab {lab.prefix}: down" + ("" if not report.empty() else " (nothing was there)"))
        for what, items in (
            ("stopped", report.stopped),
            ("removed namespaces", report.namespaces),
            ("removed links", report.links),
        ):
            if items:
                print(f"  {what}: {', '.join(items)}")
        for item in report.left_running:
            print(f"  warning: not ours, left running: {item}", file=sys.stderr)
        return 0
    if action == "up":
        up(lab)
    elif action != "status":
        raise ValueError(f"unknown action {action!r}")
    st = status(lab)
    if as_json:
        print(json.dumps(st))
    else:
        _print_status(st)
    return 0 if st["state"] == "up" else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="The one-host shadowtap lab (network namespaces).")
    ap.add_argument("action", choices=ACTIONS)
    ap.add_argument(
        "--prefix",
        default=os.environ.get("LAB_PREFIX", DEFAULT_PREFIX),
        help=f"namespace name prefix (default {DEFAULT_PREFIX}, or $LAB_PREFIX)",
    )
    ap.add_argument("--port", type=int, default=int(os.environ.get("LAB_PORT", DEFAULT_PORT)))
    ap.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR)
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    ap.add_argument(
        "--fleet",
        type=int,
        default=0,
        metavar="N",
        help="up: N primary replicas, each with a capture agent publishing to a nats-server "
        "(JetStream) in the lab, and one shadow (fleet.py)",
    )
    ap.add_argument("--backend", default="pcap", help="the fleet agents' capture backend")
    ap.add_argument("--subject", default="fleet", help="the fleet agents' NATS subject")
    args = ap.parse_args(argv)
    try:
        return run(
            args.action,
            Lab(prefix=args.prefix, port=args.port, run_dir=args.run_dir),
            as_json=args.json,
            fleet=args.fleet,
            fleet_options={"backend": args.backend, "subject": args.subject}
            if args.action == "up"
            else None,
        )
    except ShadowtapError as exc:
        print(f"lab: error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"  fix: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
