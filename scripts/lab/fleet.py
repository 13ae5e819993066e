"""The fleet lab: N primary replicas, each with a capture agent publishing to one nats-server
(JetStream), and one shadow (issue 16).

    lab.py up --fleet 3 [--backend pcap|ebpf|auto] [--subject fleet]
    lab.py status | env | down          (the lab's state says it is a fleet)

Topology (namespaces ``<prefix>-client``, ``-primary1`` .. ``-primaryN``, ``-broker``, ``-shadow``;
one veth pair a link, addresses only inside the namespaces, nothing routed):

    client   to-primaryK 10.250.(100+K).1 ── to-client   10.250.(100+K).2  primaryK
    primaryK to-broker   10.250.(110+K).1 ── to-primaryK 10.250.(110+K).2  broker
    broker   to-shadow   10.250.120.1     ── to-broker   10.250.120.2      shadow

- each primaryK runs the demo service v1 and ``shadowtap capture`` on its ``to-client``
  interface (the client's traffic only), publishing to ``nats://10.250.(110+K).2:4222/SUBJECT``
  with ``?host=<prefix>-primaryK`` (the namespaces share the machine's host name);
- the broker runs ``nats-server -js`` (store in the run directory; monitoring on 127.0.0.1:8222
  for ``status``); replay consumers run there too: they reach the stream at
  ``nats://127.0.0.1:4222`` and the shadow at ``http://10.250.120.2:PORT``;
- the shadow runs the demo service v2 (the one with deliberate regressions).

``up`` first removes whatever an earlier lab with the prefix left (fleet or not), records what it
makes in ``<run-dir>/<prefix>/`` (state.json with ``"fleet": N``, a PID file a process, logs, the
broker's store, the agents' spools), waits until every service answers, the broker is healthy
and every agent captures; on any failure it removes what it made. ``down`` (``stop``) ends the
agents first (SIGTERM: each publishes what it holds, up to its drain timeout), then the services
and the broker, each by its PID checked to be ours (its command line and a namespace of this
lab), then anything of ours still in the namespaces; lab.py's ``down`` removes the namespaces and
the run directory.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from shadowtap import netns
from shadowtap.errors import InputError, PrerequisiteError, ShadowtapError
from shadowtap.lab import lab as single

MAX_FLEET = 9
NATS_PORT = 4222
NATS_MONITOR = 8222
DEFAULT_SUBJECT = "fleet"
AGENT_READY = "capturing:"
AGENT_STOP_TIMEOUT = 60.0  # an agent drains its extraction and its sink before it exits


def client_addr(k: int) -> tuple[str, str]:
    """(the client's, primary k's) addresses on their link."""
    return f"10.250.{100 + k}.1", f"10.250.{100 + k}.2"


def broker_addr(k: int) -> tuple[str, str]:
    """(primary k's, the broker's) addresses on their link."""
    return f"10.250.{110 + k}.1", f"10.250.{110 + k}.2"


SHADOW_LINK = ("10.250.120.1", "10.250.120.2")  # (the broker's, the shadow's)


def roles(n: int) -> list[str]:
    return ["client", *(f"primary{k}" for k in range(1, n + 1)), "broker", "shadow"]


def links(n: int) -> list[tuple[str, str, str, str, str, str]]:
    """(host a, host b, interface in a, interface in b, address of a, address of b)."""
    out = []
    for k in range(1, n + 1):
        out.append(("client", f"primary{k}", f"to-primary{k}", "to-client", *client_addr(k)))
        out.append((f"primary{k}", "broker", "to-broker", f"to-primary{k}", *broker_addr(k)))
    out.append(("broker", "shadow", "to-shadow", "to-broker", *SHADOW_LINK))
    return out


def fleet_size(lab: single.Lab) -> int:
    """N of the fleet lab recorded for ``lab.prefix``; 0 when there is none."""
    state = single._read_state(lab) or {}
    n = state.get("fleet")
    return n if isinstance(n, int) else 0


def env(lab: single.Lab, n: int, subject: str | None = None) -> dict[str, str]:
    """Shell variables describing the fleet (``lab.py env``; the fleet demo evals them)."""
    state = single._read_state(lab) or {}
    subject = subject or str(state.get("subject") or DEFAULT_SUBJECT)
    out = {
        "LAB_PREFIX": lab.prefix,
        "LAB_FLEET": str(n),
        "LAB_CLIENT_NS": lab.ns("client"),
        "LAB_BROKER_NS": lab.ns("broker"),
        "LAB_SHADOW_NS": lab.ns("shadow"),
        "LAB_PORT": str(lab.port),
        "LAB_SUBJECT": subject,
        "LAB_STREAM_URL": f"nats://127.0.0.1:{NATS_PORT}/{subject}",  # from the broker's namespace
        "LAB_SHADOW_URL": f"http://{SHADOW_LINK[1]}:{lab.port}",  # from the broker's namespace
        "LAB_RUN_DIR": str(lab.dir),
    }
    for k in range(1, n + 1):
        out[f"LAB_PRIMARY{k}_NS"] = lab.ns(f"primary{k}")
        out[f"LAB_PRIMARY{k}_URL"] = f"http://{client_addr(k)[1]}:{lab.port}"
    out["LAB_PRIMARY_URLS"] = " ".join(out[f"LAB_PRIMARY{k}_URL"] for k in range(1, n + 1))
    out["LAB_AGENT_HOSTS"] = " ".join(lab.ns(f"primary{k}") for k in range(1, n + 1))
    return out


# --- processes ------------------------------------------------------------------------------------

# what a process of the fleet runs, by its PID file's stem: a word its command line must hold
_MARKERS = {"agent": "capture", "broker": "nats-server", "service": "demo_service.py"}


def _kind(stem: str) -> str:
    if stem.startswith("agent"):
        return "agent"
    return "broker" if stem == "broker" else "service"


def _lab_netns_inodes(lab: single.Lab) -> set[int]:
    out = set()
    for ns in netns.list_namespaces():
        if ns.startswith(lab.prefix + "-"):
            try:
                out.add(os.stat(f"/run/netns/{ns}").st_ino)
            except OSError:
                continue
    return out


def _ours(pid: int, lab: single.Lab, inodes: set[int], marker: str | None = None) -> bool:
    """``pid`` runs one of the fleet's programs (``marker``: that one) in a namespace of
    ``lab`` (not a recycled PID, not someone else's process)."""
    argv = single._cmdline(pid)
    words = {Path(a).name for a in argv} | set(argv)
    wanted = [marker] if marker else [*_MARKERS.values(), "traffic.py"]
    if not any(w in words for w in wanted):
        return False
    if marker == "capture" and "shadowtap" not in words:
        return False
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino in inodes
    except OSError:
        return False


def stop(lab: single.Lab, report: single.DownReport) -> None:
    """End the fleet's processes (agents first, by PID file; then anything of ours left in the
    lab's namespaces) and remove the run directory's subdirectories (the broker's store, the
    spools), so that lab.py's ``down`` can finish. Safe on a half-made or absent fleet."""
    inodes = _lab_netns_inodes(lab)
    pidfiles = sorted(lab.dir.glob("*.pid")) if lab.dir.is_dir() else []
    order = {"agent": 0, "service": 1, "broker": 2}  # the broker last: the agents drain into it
    for pidfile in sorted(pidfiles, key=lambda p: order[_kind(p.stem)]):
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            continue
        kind = _kind(pidfile.stem)
        if _ours(pid, lab, inodes, _MARKERS[kind]):
            single._stop(pid, AGENT_STOP_TIMEOUT if kind == "agent" else 5.0)
            report.stopped.append(f"{pid} ({pidfile.stem})")
        pidfile.unlink(missing_ok=True)
    for ns in netns.list_namespaces():
        if not ns.startswith(lab.prefix + "-"):
            continue
        for pid in single._namespace_pids(ns):
            if pid == os.getpid():
                continue
            if _ours(pid, lab, inodes):
                single._stop(pid, AGENT_STOP_TIMEOUT)
                report.stopped.append(f"{pid} ({' '.join(single._cmdline(pid))[:60]} in {ns})")
            elif single._cmdline(pid):
                report.left_running.append(f"{pid} in {ns}: {' '.join(single._cmdline(pid))[:120]}")
    if lab.dir.is_dir():
        for sub in lab.dir.iterdir():
            if sub.is_dir() and not sub.is_symlink():
                shutil.rmtree(sub, ignore_errors=True)
    state = single._read_state(lab) or {}
    creator, made = state.get("creator_pid"), state.get("links")
    if isinstance(creator, int) and isinstance(made, int):  # veths a crashed up left behind
        for k in range(len(single.LINKS) + 1, made + 1):
            for side in ("sta", "stb"):
                name = f"{side}{creator % 100000}x{k}"
                if "veth" in single._link_kind(name):
                    subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
                    report.links.append(name)


def _wait(what: str, ok: Any, pid: int, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if not Path(f"/proc/{pid}").exists() or single._zombie(pid):
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise ShadowtapError(f"{what} exited while starting:\n{tail}")
        if time.monotonic() > deadline:
            raise ShadowtapError(f"{what} did not start within {timeout:.0f} s (log: {log})")
        time.sleep(0.1)


# --- up -------------------------------------------------------------------------------------------


def up(
    lab: single.Lab, n: int, *, backend: str = "pcap", subject: str = DEFAULT_SUBJECT
) -> dict[str, object]:
    """Build the fleet lab (after removing any leftover of the prefix); returns its state."""
    if not 1 <= n <= MAX_FLEET:
        raise InputError(f"--fleet {n}: between 1 and {MAX_FLEET} replicas", field="fleet")
    if backend not in ("pcap", "ebpf", "auto"):
        raise InputError(f"--backend {backend!r}: pcap, ebpf or auto", field="backend")
    netns.check_prerequisites()
    nats_server = shutil.which("nats-server")
    if not nats_server:
        raise PrerequisiteError("nats-server is missing", hint="scripts/setup.sh (apt nats-server)")
    from shadowtap.lake.nats import parse_sink

    parse_sink(f"nats://x:1/{subject}")  # a bad subject fails before anything is made
    single.down(lab)  # also a fleet's: lab.py's down stops a fleet first
    lab.dir.mkdir(parents=True, exist_ok=True)
    os.chmod(lab.dir, 0o700)
    made = links(n)
    state: dict[str, object] = {
        "prefix": lab.prefix,
        "port": lab.port,
        "fleet": n,
        "backend": backend,
        "subject": subject,
        "creator_pid": os.getpid(),
        "links": len(made),
        "phase": "starting",
        "started_at": time.time(),
    }
    single._write_state(lab, state)
    try:
        hosts = single._topology(lab, roles(n), made)
        state["hosts"] = {
            role: {"ns": h.ns, "interfaces": dict(h.addrs)} for role, h in hosts.items()
        }
        procs: dict[str, int] = {}
        store = lab.dir / "js"
        store.mkdir(mode=0o700)
        procs["broker"] = single._spawn(
            lab,
            hosts["broker"],
            "broker",
            [
                nats_server,
                "-a",
                "0.0.0.0",
                "-p",
                str(NATS_PORT),
                "-js",
                "-sd",
                str(store),
                "-m",
                str(NATS_MONITOR),
                "--server_name",
                f"{lab.prefix}-broker",
            ],
        )
        for role, version in [(f"primary{k}", 1) for k in range(1, n + 1)] + [("shadow", 2)]:
            procs[role] = int(single._start_service(lab, hosts[role], role, version)["pid"])  # type: ignore[call-overload]
        state["processes"] = procs
        single._write_state(lab, state)
        for role in [f"primary{k}" for k in range(1, n + 1)] + ["shadow"]:
            ready = lab.dir / f"{role}.ready"
            _wait(
                f"the {role} demo service",
                ready.exists,
                procs[role],
                lab.dir / f"{role}.log",
                single.READY_TIMEOUT,
            )
        _wait(
            "nats-server",
            lambda: _broker_health(lab, hosts["broker"]) == "200",
            procs["broker"],
            lab.dir / "broker.log",
            single.READY_TIMEOUT,
        )
        for k in range(1, n + 1):  # the agents once the broker is there (no spooling at start)
            sink = f"nats://{broker_addr(k)[1]}:{NATS_PORT}/{subject}?host={lab.ns(f'primary{k}')}"
            procs[f"agent{k}"] = single._spawn(
                lab,
                hosts[f"primary{k}"],
                f"agent{k}",
                [
                    lab.python,
                    "-m",
                    "shadowtap",
                    "capture",
                    "-i",
                    "to-client",
                    "-p",
                    str(lab.port),
                    "-b",
                    backend,
                    "--sink",
                    sink,
                    "--sink-spool",
                    str(lab.dir / f"agent{k}.sink"),
                    "--spool-dir",
                    str(lab.dir),
                ],
            )
        state["processes"] = procs
        single._write_state(lab, state)
        for k in range(1, n + 1):
            log = lab.dir / f"agent{k}.log"
            _wait(
                f"the agent in primary{k}",
                lambda log=log: log.exists() and AGENT_READY in log.read_text(errors="replace"),  # type: ignore[misc]
                procs[f"agent{k}"],
                log,
                240.0,
            )
        for k in range(1, n + 1):
            url = f"http://{client_addr(k)[1]}:{lab.port}/health"
            ok, detail = single._health_from(hosts["client"], lab.python, url)
            if not ok:
                raise ShadowtapError(f"primary{k} does not answer {url} from the client: {detail}")
        ok, detail = single._health_from(
            hosts["broker"], lab.python, f"http://{SHADOW_LINK[1]}:{lab.port}/health"
        )
        if not ok:
            raise ShadowtapError(f"the shadow does not answer from the broker: {detail}")
        state["phase"] = "up"
        single._write_state(lab, state)
        return state
    except BaseException:
        single.down(lab)
        raise


def _broker_health(lab: single.Lab, host: netns.Host) -> str:
    return single._health_from(
        host, lab.python, f"http://127.0.0.1:{NATS_MONITOR}/healthz", timeout=2.0
    )[1]


# --- status ---------------------------------------------------------------------------------------

_JSZ = (
    "import json, sys, urllib.request\n"
    "try:\n"
    "    d = json.load(urllib.request.urlopen(sys.argv[1], timeout=3))\n"
    "    print(json.dumps({'messages': d.get('messages', 0), 'bytes': d.get('bytes', 0),"
    " 'streams': d.get('streams', 0)}))\n"
    "except Exception as e:\n"
    "    print(json.dumps({'error': f'{type(e).__name__} {e}'}))\n"
)


def status(lab: single.Lab, n: int, *, probe: bool = True) -> dict[str, object]:
    """What exists of the fleet: namespaces, services, agents and the broker with PID and
    health, the broker's JetStream totals."""
    netns.check_prerequisites()
    existing = set(netns.list_namespaces())
    inodes = _lab_netns_inodes(lab)
    state = single._read_state(lab) or {}
    namespaces: dict[str, object] = {}
    for role in roles(n):
        namespaces[role] = lab.ns(role) if lab.ns(role) in existing else None
    fleet_env = env(lab, n)
    procs: dict[str, dict[str, Any]] = {}
    client, broker = netns.Host(lab.ns("client")), netns.Host(lab.ns("broker"))
    names = (
        [f"primary{k}" for k in range(1, n + 1)]
        + [f"agent{k}" for k in range(1, n + 1)]
        + ["shadow", "broker"]
    )
    for stem in names:
        pid = None
        try:
            pid = int((lab.dir / f"{stem}.pid").read_text())
        except (OSError, ValueError):
            pass
        kind = _kind(stem)
        running = pid is not None and _ours(pid, lab, inodes, _MARKERS[kind])
        running = running and not single._zombie(pid)  # type: ignore[arg-type]
        entry: dict[str, Any] = {"pid": pid if running else None, "what": kind}
        if probe and running:
            if stem.startswith("primary") and namespaces.get("client"):
                url = fleet_env[f"LAB_{stem.upper()}_URL"]
                entry["url"] = url
                entry["health"] = single._health_from(client, lab.python, url + "/health")[1]
            elif stem == "shadow" and namespaces.get("broker"):
                entry["url"] = fleet_env["LAB_SHADOW_URL"]
                entry["health"] = single._health_from(broker, lab.python, entry["url"] + "/health")[
                    1
                ]
            elif stem == "broker":
                entry["health"] = _broker_health(lab, broker)
                proc = broker.run(
                    [lab.python, "-c", _JSZ, f"http://127.0.0.1:{NATS_MONITOR}/jsz"],
                    check=False,
                    timeout=20,
                )
                entry["jetstream"] = json.loads(proc.stdout or "{}")
            elif stem.startswith("agent"):
                k = stem[5:]
                entry["host"] = lab.ns(f"primary{k}")
                entry["sink"] = (
                    f"nats://{broker_addr(int(k))[1]}:{NATS_PORT}/{state.get('subject')}"
                )
        procs[stem] = entry
    healthy = all(
        p["pid"] and (not probe or p.get("health", "200") == "200") for p in procs.values()
    )
    complete = all(namespaces.values()) and healthy
    anything = any(namespaces.values()) or any(p["pid"] for p in procs.values()) or lab.dir.exists()
    return {
        "prefix": lab.prefix,
        "fleet": n,
        "state": "up" if complete else ("partial" if anything else "down"),
        "phase": state.get("phase"),
        "namespaces": namespaces,
        "processes": procs,
        "run_dir": str(lab.dir),
        "env": fleet_env,
    }


def print_status(st: dict[str, Any]) -> None:
    from shadowtap.console import table

    rows = []
    for stem, p in st["processes"].items():
        if not p["pid"]:
            rows.append((stem, "-", "NOT RUNNING", ""))
            continue
        if p["what"] == "agent":
            detail = f"capture -> {p.get('sink', '')} as {p.get('host', '')}"
        elif p["what"] == "broker":
            js = p.get("jetstream") or {}
            detail = (
                f"nats-server -js health={p.get('health')} streams={js.get('streams')} "
                f"messages={js.get('messages')} bytes={js.get('bytes')}"
            )
        else:
            detail = f"demo {p.get('url', '')} health={p.get('health')}"
        ns = st["prefix"] + "-" + (f"primary{stem[5:]}" if p["what"] == "agent" else stem)
        rows.append((stem, ns, str(p["pid"]), detail))
    table(
        f"fleet lab {st['prefix']} ({st['fleet']} primaries): {st['state']}",
        ("process", "namespace", "pid", "what"),
        rows,
    )


def run(action: str, lab: single.Lab, n: int, *, as_json: bool = False, **up_kw: Any) -> int:
    """``lab.py ACTION --fleet N`` (``down`` is lab.py's, which stops a fleet first)."""
    if action == "env":
        for k, v in env(lab, n or fleet_size(lab)).items():
            print(f"{k}={shlex.quote(v)}")  # for eval: some hold spaces
        return 0
    if action == "up":
        up(lab, n, **up_kw)
    st = status(lab, n or fleet_size(lab))
    if as_json:
        print(json.dumps(st))
    else:
        print_status(st)
    return 0 if st["state"] == "up" else 1


# --- the demo's helper ----------------------------------------------------------------------------


def split_by_host(url: str, out_dir: str, results: list[str]) -> dict[str, dict[str, int]]:
    """A fleet run's exchanges from its stream, and the replay's results, into one pair of files
    per agent host (``exchanges-<host>.jsonl``, ``results-<host>.jsonl``, 0600) for ``shadowtap
    export --host``; returns {host: {"exchanges": n, "results": n}}. Results of an exchange that
    is not in the stream go to ``results-unknown.jsonl``."""
    import orjson

    from shadowtap.jsonl import create_private, read_jsonl
    from shadowtap.lake.nats import stream_records

    os.makedirs(out_dir, mode=0o700, exist_ok=True)
    files: dict[str, Any] = {}
    counts: dict[str, dict[str, int]] = {}
    host_of: dict[str, str] = {}

    def out(name: str) -> Any:
        if name not in files:
            files[name] = create_private(os.path.join(out_dir, name))
        return files[name]

    try:
        for kind, host, rec in stream_records(url):
            if kind != "x":
                continue
            host = host or "unknown"
            host_of[orjson.loads(rec)["id"]] = host
            out(f"exchanges-{host}.jsonl").write(rec + b"\n")
            counts.setdefault(host, {"exchanges": 0, "results": 0})["exchanges"] += 1
        for path in results:
            for res in read_jsonl(path, lambda d: d):
                host = host_of.get(res.get("exchange_id", ""), "unknown")
                out(f"results-{host}.jsonl").write(orjson.dumps(res) + b"\n")
                counts.setdefault(host, {"exchanges": 0, "results": 0})["results"] += 1
    finally:
        for f in files.values():
            f.close()
    return counts


def main(argv: list[str] | None = None) -> int:
    """``python -m shadowtap.lab.fleet split URL DIR [RESULTS...]`` (the fleet demo's step)."""
    import argparse

    ap = argparse.ArgumentParser(description="Split a fleet run by agent host.")
    ap.add_argument("action", choices=("split",))
    ap.add_argument("url", help="nats://host:4222/SUBJECT")
    ap.add_argument("out_dir")
    ap.add_argument("results", nargs="*", help="replay's results files")
    args = ap.parse_args(argv)
    try:
        print(json.dumps(split_by_host(args.url, args.out_dir, args.results)))
    except ShadowtapError as exc:
        print(f"fleet: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
