"""The lab's traffic generator: a realistic mix of requests to the demo service at a chosen rate.

Open loop: requests are due at a fixed pace (``start + i / rate``) or, with ``--arrivals poisson``
(the default: real users do not coordinate), at exponentially distributed intervals of mean
``1 / rate``; either way whatever the answers' latency, with at most
``--concurrency`` in flight (a request that finds no free slot waits and is counted ``late``).
Bounded: stops at ``--count`` requests or after ``--duration`` seconds, whichever comes first
(one of them is required; hard caps 1,000,000 requests and one hour). A share of the requests
(``--new-connection-share``) goes on a fresh TCP connection each, the rest on keep-alive ones.
Besides them, ``--grpc-share`` of the slots also make a gRPC ``ModelInfer`` call
(scripts/lab/grpc_model.py), all on one HTTP/2 connection to the same port.

Only the lab's addresses are allowed as the target: 10.250.0.0/16 (inside the lab's namespaces),
loopback, and networks named with ``--allow-network`` (the Vagrant lab's private network).

The same ``--seed`` gives the same sequence of requests. Prints a summary (JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import grpc

from shadowtap.lab import grpc_model
from shadowtap.lab.llm_service import prompts

LAB_NETWORK = ipaddress.ip_network("10.250.0.0/16")
MAX_COUNT = 1_000_000
MAX_DURATION = 3600.0

# endpoint name -> weight in the mix
MIX = {
    "list": 28,  # GET /v1/products?page=&per_page=
    "product": 25,  # GET /v1/products/{id}
    "predict": 20,  # POST /v1/predict
    "search": 15,  # GET /v1/search?q=&limit=
    "categories": 5,  # GET /v1/categories
    "order": 4,  # POST /v1/orders (a side effect: the demo never mirrors it)
    "health": 3,  # GET /health
    "chat": 6,  # POST /v1/chat/completions (half streamed as SSE; scripts/lab/llm_service.py)
}
# Besides the mix: a gRPC ModelInfer call (h2c on the same port; scripts/lab/grpc_model.py) joins
# this share of the slots, drawn from its own random stream, so the HTTP requests of a seed stay
# the same with or without it.
GRPC_SHARE = 0.1
_SEARCH_WORDS = (
    "compact",
    "smart",
    "wireless",
    "pro",
    "mini",
    "portable",
    "speaker",
    "lamp",
    "kettle",
    "camera",
    "phone",
    "watch",
    "keyboard",
    "headset",
    "charger",
    "monitor",
)
_COUNTRIES = (("DE", 30), ("US", 25), ("GB", 15), ("FR", 12), ("IN", 8), ("BR", 6), ("NG", 4))
_DEVICES = (("mobile", 55), ("desktop", 35), ("tablet", 10))
_PROMPTS = prompts(60)


@dataclass(frozen=True, slots=True)
class Planned:
    endpoint: str
    method: str
    path: str
    body: dict[str, object] | None
    new_connection: bool


def random_features(rng: random.Random) -> dict[str, object]:
    """One input of the model, drawn like the lab's customers."""
    return {
        "amount": round(rng.lognormvariate(4.0, 1.1), 2),
        "account_age_days": int(rng.expovariate(1 / 400)),
        "items": rng.randint(1, 8),
        "country": rng.choices([c for c, _ in _COUNTRIES], [w for _, w in _COUNTRIES])[0],
        "device": rng.choices([d for d, _ in _DEVICES], [w for _, w in _DEVICES])[0],
        "hour": rng.randint(0, 23),
    }


def plan_request(
    rng: random.Random, new_connection_share: float, *, orders: bool = True
) -> Planned:
    """The next request of the mix (pure: the same rng state gives the same request)."""
    names = [n for n in MIX if orders or n != "order"]
    endpoint = rng.choices(names, [MIX[n] for n in names])[0]
    new_conn = rng.random() < new_connection_share
    body: dict[str, object] | None = None
    method = "GET"
    if endpoint == "list":
        per_page = rng.choices((20, 10, 50), (80, 10, 10))[0]
        path = f"/v1/products?page={rng.randint(1, 100)}&per_page={per_page}"
    elif endpoint == "product":
        # 2% of the ids do not exist: the 404s real clients cause
        pid = rng.randint(2001, 2100) if rng.random() < 0.02 else rng.randint(1, 2000)
        path = f"/v1/products/{pid}"
    elif endpoint == "search":
        words = rng.sample(_SEARCH_WORDS, rng.choices((1, 2), (70, 30))[0])
        path = f"/v1/search?q={'+'.join(words)}&limit={rng.choice((10, 20, 20, 50))}"
    elif endpoint == "categories":
        path = "/v1/categories"
    elif endpoint == "health":
        path = "/health"
    elif endpoint == "predict":
        method, path, body = "POST", "/v1/predict", {"features": random_features(rng)}
    elif endpoint == "chat":
        stream = rng.random() < 0.5
        body = {
            "model": "demo",
            "stream": stream,
            "messages": [{"role": "user", "content": _PROMPTS[rng.randrange(len(_PROMPTS))]}],
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        method, path = "POST", "/v1/chat/completions"
    else:
        items = [
            {"product_id": rng.randint(1, 2000), "quantity": rng.randint(1, 3)}
            for _ in range(rng.randint(1, 3))
        ]
        method, path, body = "POST", "/v1/orders", {"items": items}
    return Planned(endpoint, method, path, body, new_conn)


def plan_grpc(rng: random.Random) -> Planned:
    """The next gRPC call (pure: its features and request id from ``rng``); one long-lived
    channel, as model clients keep, so never a new connection."""
    body: dict[str, object] = {"features": random_features(rng), "id": f"{rng.getrandbits(32):08x}"}
    return Planned("infer", "POST", grpc_model.METHOD, body, False)


def check_target(
    url: str, allowed: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
) -> str:
    """The target's base URL if it is one of the lab's addresses (or in ``allowed``); ValueError
    else."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"target {url!r}: expected http://ADDRESS:PORT")
    host = "127.0.0.1" if parts.hostname == "localhost" else parts.hostname
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"target {url!r}: give an IP address of the lab (10.250.0.0/16) or loopback"
        ) from None
    if not (addr.is_loopback or addr in LAB_NETWORK or any(addr in net for net in allowed)):
        raise ValueError(
            f"target {url!r}: only the lab's addresses (10.250.0.0/16) and loopback are allowed"
        )
    return f"http://{parts.netloc}"


def _private_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A network given to --allow-network: private address space only (RFC 1918, ULA)."""
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(
            f"--allow-network {text!r}: not a network (e.g. 192.168.56.0/24)"
        ) from None
    if not net.is_private or net.prefixlen < (16 if net.version == 4 else 48):
        raise ValueError(
            f"--allow-network {text!r}: only a private network of at most /16 (IPv4) is allowed"
        )
    return net


@dataclass
class Summary:
    planned: int = 0
    sent: int = 0
    late: int = 0
    new_connections: int = 0
    failures: int = 0
    elapsed: float = 0.0
    grpc_calls: int = 0  # besides the HTTP requests (``sent``): the gRPC calls made

    def __post_init__(self) -> None:
        self.statuses: Counter[str] = Counter()  # "endpoint status" -> count
        self.errors: Counter[str] = Counter()

    def to_json(self) -> dict[str, object]:
        return {
            "planned": self.planned,
            "sent": self.sent,
            "grpc_calls": self.grpc_calls,
            "late": self.late,
            "new_connections": self.new_connections,
            "failures": self.failures,
            "elapsed_s": round(self.elapsed, 3),
            "rate": round(self.sent / self.elapsed, 2) if self.elapsed else 0.0,
            "statuses": dict(sorted(self.statuses.items())),
            "errors": dict(self.errors),
        }


async def run(
    target: str,
    *,
    rate: float,
    count: int | None,
    duration: float | None,
    seed: int,
    arrivals: str = "poisson",
    concurrency: int = 16,
    new_connection_share: float = 0.2,
    orders: bool = True,
    timeout: float = 10.0,
    allowed: tuple[str, ...] = (),
    grpc_share: float = GRPC_SHARE,
) -> Summary:
    base = check_target(target, tuple(_private_network(n) for n in allowed))
    if rate <= 0:
        raise ValueError("rate must be positive")
    if count is None and duration is None:
        raise ValueError("give --count or --duration (or both)")
    count = min(count if count is not None else MAX_COUNT, MAX_COUNT)
    duration = min(duration if duration is not None else MAX_DURATION, MAX_DURATION)
    if arrivals not in ("poisson", "uniform"):
        raise ValueError(f"arrivals must be poisson or uniform, not {arrivals!r}")
    rng = random.Random(seed)
    gaps = random.Random(seed + 1)  # its own stream: the requests do not depend on the arrivals
    grpc_rng = random.Random(seed + 2)  # the gRPC calls' own stream too
    summary = Summary()
    slots = asyncio.Semaphore(concurrency)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    keepalive = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency), timeout=client_timeout
    )
    fresh = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True, limit=concurrency), timeout=client_timeout
    )

    # gRPC calls: one HTTP/2 connection (h2c with prior knowledge) to the same port.
    channel = grpc.aio.insecure_channel(urlsplit(base).netloc)
    model_infer = channel.unary_unary(
        grpc_model.METHOD,
        request_serializer=grpc_model.ModelInferRequest.SerializeToString,
        response_deserializer=grpc_model.ModelInferResponse.FromString,
    )

    async def infer(p: Planned) -> None:
        assert p.body is not None
        req = grpc_model.infer_request(p.body["features"], str(p.body["id"]))  # type: ignore[arg-type]
        try:
            await model_infer(req, timeout=timeout)
            summary.statuses["infer OK"] += 1
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                summary.failures += 1
                summary.errors[f"grpc {exc.code().name}"] += 1
            else:  # an answer, as an HTTP 4xx is
                summary.statuses[f"infer {exc.code().name}"] += 1
        finally:
            slots.release()

    async def one(p: Planned) -> None:
        if p.endpoint == "infer":
            await infer(p)
            return
        try:
            session = fresh if p.new_connection else keepalive
            async with session.request(p.method, base + p.path, json=p.body) as resp:
                await resp.read()
                summary.statuses[f"{p.endpoint} {resp.status}"] += 1
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            summary.failures += 1
            summary.errors[type(exc).__name__] += 1
        finally:
            slots.release()

    tasks: set[asyncio.Task[None]] = set()
    start = time.monotonic()
    try:
        offset = 0.0
        for i in range(count):
            if i:
                offset += gaps.expovariate(rate) if arrivals == "poisson" else 1 / rate
            due = start + offset
            now = time.monotonic()
            if due - start >= duration:
                break
            if due > now:
                await asyncio.sleep(due - now)
            if slots.locked():
                summary.late += 1
            await slots.acquire()
            p = plan_request(rng, new_connection_share, orders=orders)
            summary.planned += 1
            summary.sent += 1
            summary.new_connections += p.new_connection
            task = asyncio.create_task(one(p))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if grpc_rng.random() < grpc_share:
                await slots.acquire()
                summary.grpc_calls += 1
                task = asyncio.create_task(one(plan_grpc(grpc_rng)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=timeout + 1)
    finally:
        for task in tasks:
            task.cancel()
        await keepalive.close()
        await fresh.close()
        await channel.close()
        summary.elapsed = time.monotonic() - start
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Send the lab's traffic mix to the demo service.")
    ap.add_argument(
        "--target", required=True, help="http://ADDRESS:PORT of the service (lab addresses only)"
    )
    ap.add_argument("--rate", type=float, default=20.0, help="requests per second (default 20)")
    ap.add_argument("--count", type=int, help="stop after this many requests")
    ap.add_argument("--duration", type=float, help="stop after this many seconds")
    ap.add_argument(
        "--arrivals",
        choices=("poisson", "uniform"),
        default="poisson",
        help="request intervals: exponential of mean 1/rate (default) or fixed",
    )
    ap.add_argument("--seed", type=int, default=None, help="the same seed sends the same requests")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument(
        "--new-connection-share",
        type=float,
        default=0.2,
        help="share of requests sent on a new TCP connection (default 0.2)",
    )
    ap.add_argument("--no-orders", action="store_true", help="leave POST /v1/orders out of the mix")
    ap.add_argument(
        "--grpc-share",
        type=float,
        default=GRPC_SHARE,
        help=f"share of the slots that also make a gRPC ModelInfer call (default {GRPC_SHARE})",
    )
    ap.add_argument(
        "--allow-network",
        action="append",
        default=[],
        metavar="CIDR",
        help="also allow targets in this private network (the Vagrant lab's); repeatable",
    )
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    try:
        summary = asyncio.run(
            run(
                args.target,
                rate=args.rate,
                count=args.count,
                duration=args.duration,
                seed=seed,
                arrivals=args.arrivals,
                concurrency=args.concurrency,
                new_connection_share=args.new_connection_share,
                orders=not args.no_orders,
                allowed=tuple(args.allow_network),
                grpc_share=args.grpc_share,
            )
        )
    except ValueError as exc:
        print(f"traffic: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    data = summary.to_json() | {"seed": seed, "target": args.target}
    if args.json:
        print(json.dumps(data))
    else:
        print(
            f"traffic: {summary.sent} requests in {data['elapsed_s']} s ({data['rate']}/s), "
            f"{summary.grpc_calls} gRPC calls, "
            f"{summary.new_connections} on new connections, {summary.late} late, "
            f"{summary.failures} failed (seed {seed})"
        )
        for key, n in sorted(summary.statuses.items()):
            print(f"  {key}: {n}")
    return 0 if summary.failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
