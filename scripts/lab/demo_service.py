"""The lab's demo service: a small product-catalogue JSON API with a model-serving endpoint.

Version 1 runs in the lab's primary, version 2 in its shadow. Version 2 carries deliberate changes,
each deterministic per input so tests can assert the exact regressions:

| endpoint                   | version 2 change                                                  |
| -------------------------- | ----------------------------------------------------------------- |
| GET  /v1/products/{id}     | field ``price`` renamed ``unit_price`` (a regression)             |
| GET  /v1/search            | twice as slow (a latency regression)                              |
| GET  /v1/products          | HTTP 500 for 2% of inputs: pages with ``page % 50 == 7``          |
| GET  /v1/categories        | a harmless new top-level field ``cache_ttl_s``                    |
| POST /v1/predict           | retrained model: scores shift slightly, labels flip on ~5%        |
| POST /v1/chat/completions  | refuses 1 prompt in 5, paraphrases 2 in 5, slower first token     |

Noise present in both versions (not regressions): timestamps (``generated_at``, ``scored_at``,
``time``), request ids (``request_id`` and the ``X-Request-Id`` header), the ``tags`` list of a
product, returned in random order, and ``took_ms`` of a search (server timing: a number no
comparison can tell from a result without being told; scripts/lab/demo-compare.toml tells it).

On the same port, gRPC: KServe v2's ``inference.GRPCInferenceService/ModelInfer``, a risk classifier
over the ``/v1/predict`` features whose version 2 shifts the scores and flips the top-1 class of
about 5% of the inputs (scripts/lab/grpc_model.py).

Other endpoints: ``GET /health``, ``POST /v1/orders`` (creates an order: a side effect, never
mirrored), ``GET /v1/export`` (all products as NDJSON with chunked transfer coding). Responses are
gzip-compressed when the client accepts it and the body is large enough (aiohttp's compression).

Usage: demo_service.py --version 1|2 [--host 0.0.0.0] [--port 8080] [--ready-file F] [--name N]
The ready file gets ``{"pid": ..., "port": ...}`` once the socket listens (port 0 = ephemeral).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from shadowtap.lab.llm_service import add_routes

# --- the catalogue: pure and deterministic (the same 2000 products in every process) -------------

N_PRODUCTS = 2000
CATEGORIES = (
    "audio",
    "books",
    "cameras",
    "garden",
    "kitchen",
    "laptops",
    "phones",
    "sports",
    "toys",
    "tools",
)
_ADJECTIVES = (
    "compact",
    "classic",
    "smart",
    "rugged",
    "silent",
    "wireless",
    "deluxe",
    "eco",
    "portable",
    "pro",
    "ultra",
    "mini",
    "vintage",
    "modular",
    "solar",
    "carbon",
)
_NOUNS = (
    "speaker",
    "lamp",
    "kettle",
    "drill",
    "camera",
    "phone",
    "backpack",
    "blender",
    "router",
    "watch",
    "tent",
    "keyboard",
    "headset",
    "grill",
    "scooter",
    "monitor",
    "bottle",
    "charger",
)
_TAGS = (
    "new",
    "sale",
    "bestseller",
    "eco",
    "gift",
    "refurbished",
    "limited",
    "bundle",
    "premium",
    "clearance",
    "exclusive",
    "warranty-3y",
)
SEARCH_TERMS = _ADJECTIVES + _NOUNS


@dataclass(frozen=True, slots=True)
class Product:
    id: int
    name: str
    category: str
    price: float
    stock: int
    tags: tuple[str, ...]


def _make_catalogue() -> dict[int, Product]:
    rng = random.Random(20261126)  # fixed: every process builds the same catalogue
    products = {}
    for pid in range(1, N_PRODUCTS + 1):
        name = f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)} {rng.randint(100, 999)}"
        products[pid] = Product(
            id=pid,
            name=name,
            category=rng.choice(CATEGORIES),
            price=round(rng.uniform(4, 900), 2),
            stock=rng.randint(0, 250),
            tags=tuple(sorted(rng.sample(_TAGS, rng.randint(3, 5)))),
        )
    return products


CATALOGUE = _make_catalogue()

# --- the model: pure and deterministic ------------------------------------------------------------

FEATURES = ("amount", "account_age_days", "items", "country", "device", "hour")
_COUNTRY_RISK = {"DE": -0.2, "FR": -0.1, "GB": 0.0, "US": 0.1, "BR": 0.5, "IN": 0.4, "NG": 0.9}
_DEVICE_RISK = {"desktop": -0.2, "mobile": 0.1, "tablet": 0.0}
THRESHOLD = 0.5


class FeatureError(ValueError):
    pass


def validate_features(features: object) -> dict[str, float | int | str]:
    """The posted features, checked; FeatureError names the first bad one."""
    if not isinstance(features, dict):
        raise FeatureError("features must be an object")
    for name in FEATURES:
        if name not in features:
            raise FeatureError(f"missing feature {name!r}")
    amount, age, items, hour = (
        features[k] for k in ("amount", "account_age_days", "items", "hour")
    )
    if not isinstance(amount, (int, float)) or isinstance(amount, bool) or not 0 <= amount <= 1e7:
        raise FeatureError("amount must be a number between 0 and 10000000")
    for key, value, top in (
        ("account_age_days", age, 100000),
        ("items", items, 1000),
        ("hour", hour, 23),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
            raise FeatureError(f"{key} must be an integer between 0 and {top}")
    if features["country"] not in _COUNTRY_RISK:
        raise FeatureError(f"country must be one of {', '.join(sorted(_COUNTRY_RISK))}")
    if features["device"] not in _DEVICE_RISK:
        raise FeatureError(f"device must be one of {', '.join(sorted(_DEVICE_RISK))}")
    return {k: features[k] for k in FEATURES}


def _logit(f: dict[str, float | int | str]) -> float:
    night = 1.0 if f["hour"] < 6 else 0.0  # type: ignore[operator]
    return (
        -2.0
        + 0.55 * math.log1p(float(f["amount"]))
        - 0.6 * math.log1p(float(f["account_age_days"]) / 30.0)
        + 0.08 * float(f["items"])
        + _COUNTRY_RISK[str(f["country"])]
        + _DEVICE_RISK[str(f["device"])]
        + 0.35 * night
    )


def predict(features: dict[str, float | int | str], version: int) -> tuple[float, str]:
    """(score, label) for validated features. Version 2 is the "retrained" model: its logit is the
    first one's scaled and shifted a little, so scores move up by about 0.026 and labels flip for
    the
    inputs near the threshold (about 5% of the traffic generator's mix)."""
    z = _logit(features)
    if version == 2:
        z = 1.04 * z + 0.15
    score = round(1.0 / (1.0 + math.exp(-z)), 4)
    return score, ("review" if score >= THRESHOLD else "approve")


def products_page_fails(page: int, version: int) -> bool:
    """Version 2's injected failure: 2% of the pages (page % 50 == 7) answer 500."""
    return version == 2 and page % 50 == 7


def search(query: str, limit: int) -> list[Product]:
    """Products whose name or category contains every word of ``query``, best first (more words
    matched at the start of a name first, then by id): deterministic order."""
    words = [w for w in query.lower().split() if w]
    if not words:
        return []
    hits = []
    for p in CATALOGUE.values():
        text = f"{p.name} {p.category}"
        if all(w in text for w in words):
            hits.append((0 if p.name.startswith(words[0]) else 1, p.id, p))
    hits.sort(key=lambda t: (t[0], t[1]))
    return [p for _, _, p in hits[:limit]]


def search_delay(limit: int, version: int) -> float:
    """Seconds a search takes: proportional to ``limit`` (10 ms + 1 ms per result asked);
    version 2 takes twice as long."""
    return (0.010 + 0.001 * limit) * (2 if version == 2 else 1)


# --- the HTTP shell -------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _product_json(p: Product, version: int, rng: random.Random) -> dict[str, object]:
    tags = list(p.tags)
    rng.shuffle(tags)  # noise: a set serialised in hash order
    price_key = "unit_price" if version == 2 else "price"
    return {
        "id": p.id,
        "name": p.name,
        "category": p.category,
        price_key: p.price,
        "currency": "EUR",
        "stock": p.stock,
        "tags": tags,
    }


def _json(data: object, *, status: int = 200, request_id: str) -> web.Response:
    return web.json_response(
        data,
        status=status,
        headers={"X-Request-Id": request_id},
        dumps=lambda o: json.dumps(o, separators=(",", ":")),
    )


def _int_arg(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"{name} must be an integer"}),
            content_type="application/json",
        ) from None
    if not low <= value <= high:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"{name} must be in {low}..{high}"}),
            content_type="application/json",
        )
    return value


class DemoService:
    def __init__(self, version: int, name: str) -> None:
        self.version = version
        self.name = name
        self.rng = random.Random()  # the noise: unseeded on purpose
        self.orders: dict[str, dict[str, object]] = {}

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._compress], client_max_size=1 << 20)
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/products", self.list_products)
        app.router.add_get("/v1/products/{id}", self.get_product)
        app.router.add_get("/v1/search", self.search)
        app.router.add_get("/v1/categories", self.categories)
        app.router.add_get("/v1/export", self.export)
        app.router.add_post("/v1/orders", self.create_order)
        app.router.add_post("/v1/predict", self.predict)
        add_routes(app, self.version)  # POST /v1/chat/completions, /v1/embeddings (llm_service.py)
        return app

    @web.middleware
    async def _compress(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        response = await handler(request)
        if (
            isinstance(response, web.Response)
            and isinstance(response.body, (bytes, bytearray))
            and len(response.body) >= 1024
            and "gzip" in request.headers.get("Accept-Encoding", "")
        ):
            response.enable_compression(web.ContentCoding.gzip)
        response.headers["Server"] = "demo-catalogue"
        return response

    def _rid(self) -> str:
        return uuid.uuid4().hex

    async def health(self, request: web.Request) -> web.Response:
        return _json({"status": "ok", "time": _now()}, request_id=self._rid())

    async def list_products(self, request: web.Request) -> web.Response:
        rid = self._rid()
        page = _int_arg(request, "page", 1, 1, 10000)
        per_page = _int_arg(request, "per_page", 20, 1, 100)
        if products_page_fails(page, self.version):
            return _json(
                {"error": "internal server error", "request_id": rid}, status=500, request_id=rid
            )
        first = (page - 1) * per_page + 1
        items = [
            {"id": p.id, "name": p.name, "price": p.price, "category": p.category}
            for p in (CATALOGUE[i] for i in range(first, min(first + per_page, N_PRODUCTS + 1)))
        ]
        return _json(
            {
                "items": items,
                "page": page,
                "per_page": per_page,
                "total": N_PRODUCTS,
                "request_id": rid,
                "generated_at": _now(),
            },
            request_id=rid,
        )

    async def get_product(self, request: web.Request) -> web.Response:
        rid = self._rid()
        try:
            p = CATALOGUE[int(request.match_info["id"])]
        except (ValueError, KeyError):
            return _json(
                {"error": "product not found", "request_id": rid}, status=404, request_id=rid
            )
        return _json(_product_json(p, self.version, self.rng), request_id=rid)

    async def search(self, request: web.Request) -> web.Response:
        rid = self._rid()
        limit = _int_arg(request, "limit", 20, 1, 1000)
        start = time.monotonic()
        await asyncio.sleep(search_delay(limit, self.version))
        hits = search(request.query.get("q", ""), limit)
        results = [{"id": p.id, "name": p.name, "price": p.price} for p in hits]
        return _json(
            {
                "query": request.query.get("q", ""),
                "results": results,
                "count": len(results),
                "took_ms": round((time.monotonic() - start) * 1000, 1),
                "request_id": rid,
            },
            request_id=rid,
        )

    async def categories(self, request: web.Request) -> web.Response:
        rid = self._rid()
        counts: dict[str, int] = {}
        for p in CATALOGUE.values():
            counts[p.category] = counts.get(p.category, 0) + 1
        body: dict[str, object] = {
            "categories": [{"name": c, "products": counts[c]} for c in CATEGORIES],
            "request_id": rid,
        }
        if self.version == 2:
            body["cache_ttl_s"] = 300  # the harmless new field
        return _json(body, request_id=rid)

    async def export(self, request: web.Request) -> web.StreamResponse:
        """All products (or ``?limit=N``) as NDJSON, streamed in chunks of 50 lines."""
        limit = _int_arg(request, "limit", N_PRODUCTS, 1, N_PRODUCTS)
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/x-ndjson",
                "X-Request-Id": self._rid(),
                "Server": "demo-catalogue",
            }
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        lines: list[str] = []
        for pid in range(1, limit + 1):
            p = CATALOGUE[pid]
            lines.append(json.dumps({"id": p.id, "name": p.name, "price": p.price}) + "\n")
            if len(lines) == 50 or pid == limit:
                await response.write("".join(lines).encode())
                lines.clear()
        await response.write_eof()
        return response

    async def _json_body(self, request: web.Request, rid: str) -> object:
        try:
            return await request.json()
        except (ValueError, UnicodeDecodeError):
            raise web.HTTPBadRequest(
                text=json.dumps({"error": "body must be JSON", "request_id": rid}),
                content_type="application/json",
                headers={"X-Request-Id": rid},
            ) from None

    async def create_order(self, request: web.Request) -> web.Response:
        rid = self._rid()
        body = await self._json_body(request, rid)
        items = body.get("items") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items:
            return _json(
                {"error": "items must be a non-empty list", "request_id": rid},
                status=400,
                request_id=rid,
            )
        total = 0.0
        for item in items:
            pid = item.get("product_id") if isinstance(item, dict) else None
            qty = item.get("quantity", 1) if isinstance(item, dict) else None
            if pid not in CATALOGUE or not isinstance(qty, int) or qty < 1:
                return _json(
                    {"error": f"bad item {item!r}", "request_id": rid}, status=400, request_id=rid
                )
            total += CATALOGUE[pid].price * qty
        order_id = str(uuid.uuid4())
        order = {
            "order_id": order_id,
            "status": "created",
            "items": items,
            "total": round(total, 2),
            "currency": "EUR",
            "created_at": _now(),
        }
        self.orders[order_id] = order  # the side effect that must never be mirrored
        return _json(order, status=201, request_id=rid)

    async def predict(self, request: web.Request) -> web.Response:
        rid = self._rid()
        body = await self._json_body(request, rid)
        try:
            features = validate_features(body.get("features") if isinstance(body, dict) else None)
        except FeatureError as exc:
            return _json({"error": str(exc), "request_id": rid}, status=400, request_id=rid)
        score, label = predict(features, self.version)
        return _json(
            {"score": score, "label": label, "request_id": rid, "scored_at": _now()}, request_id=rid
        )


def _write_ready(path: str, data: dict[str, object]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)  # atomic: a reader sees the whole file or none


_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class _Front(asyncio.Protocol):
    """The service's port: a connection that opens with the HTTP/2 preface is gRPC (relayed over
    loopback to the grpcio server, scripts/lab/grpc_model.py), anything else is HTTP/1.x for
    aiohttp (handed its protocol, no relay). One port for REST and gRPC, as behind a model
    server's ingress; written here because neither aiohttp nor grpcio can share a listener.
    Decided on the first 4 bytes (``PRI `` is no HTTP/1.x method)."""

    def __init__(self, http: Any, grpc_port: int) -> None:
        self.http = http
        self.grpc_port = grpc_port
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) < 4 and _H2_PREFACE.startswith(self.buf):
            return
        assert self.transport is not None
        proto: asyncio.Protocol
        if self.buf.startswith(b"PRI "):
            proto = _Relay(self.grpc_port)
        else:
            proto = self.http()
        self.transport.set_protocol(proto)
        proto.connection_made(self.transport)
        proto.data_received(self.buf)


class _Relay(asyncio.Protocol):
    """Bytes both ways between a client connection and the local gRPC server; each side's
    reading paused while the other cannot keep up (memory bounded by the write buffers)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.client: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client = transport  # type: ignore[assignment]
        asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_connection(
                lambda: _Upstream(self), "127.0.0.1", self.port
            )
        except OSError:
            if self.client is not None:
                self.client.close()
            return
        self.upstream = transport  # type: ignore[assignment]
        for data in self.early:
            transport.write(data)  # type: ignore[attr-defined]
        self.early.clear()

    def data_received(self, data: bytes) -> None:
        if self.upstream is None:
            self.early.append(data)
        else:
            self.upstream.write(data)

    def pause_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()


class _Upstream(asyncio.Protocol):
    def __init__(self, relay: _Relay) -> None:
        self.relay = relay

    def data_received(self, data: bytes) -> None:
        assert self.relay.client is not None
        self.relay.client.write(data)

    def pause_writing(self) -> None:
        assert self.relay.client is not None
        self.relay.client.pause_reading()

    def resume_writing(self) -> None:
        assert self.relay.client is not None
        self.relay.client.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        assert self.relay.client is not None
        self.relay.client.close()


async def serve(version: int, host: str, port: int, name: str, ready_file: str | None) -> None:
    """REST (aiohttp) and gRPC (grpcio, scripts/lab/grpc_model.py) on one port (``_Front``)."""
    import grpc

    from shadowtap.lab import grpc_model

    service = DemoService(version, name)
    runner = web.AppRunner(service.app(), access_log=None, handle_signals=True)
    await runner.setup()
    model = grpc.aio.server()
    grpc_model.add_to_server(model, version)
    grpc_port = model.add_insecure_port("127.0.0.1:0")
    await model.start()
    http = runner.server
    assert http is not None
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(
        lambda: _Front(http, grpc_port), host, port, reuse_address=True
    )
    bound = listener.sockets[0].getsockname()[1]
    if ready_file:
        _write_ready(
            ready_file, {"pid": os.getpid(), "port": bound, "version": version, "name": name}
        )
    print(f"demo service {name} v{version} listening on {host}:{bound} (REST and gRPC)", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        listener.close()
        await model.stop(None)
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="The lab's demo catalogue service.")
    ap.add_argument("--version", type=int, choices=(1, 2), default=1)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--name", default="demo")
    ap.add_argument("--ready-file")
    args = ap.parse_args(argv)
    try:
        asyncio.run(serve(args.version, args.host, args.port, args.name, args.ready_file))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
