"""Generated pairs (exchange + the shadow's result) for the lake's tests and benchmarks: several
endpoints, JSON bodies with a volatile field, a field the shadow gets wrong on one endpoint,
shadow errors and 5xx, a missing primary response, binary and non-UTF-8 bodies, anomalies,
repeated headers, result extras and copies; with ``rich``, HTTP/2 streams, gRPC calls (binary
messages), streamed bodies' chunk times and TLS handshakes too. Deterministic for a seed."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator

import orjson

from shadowtap.compare.report import as_json
from shadowtap.jsonl import JsonlWriter
from shadowtap.records import (
    Exchange,
    GrpcCall,
    GrpcMessage,
    H2Stream,
    Request,
    Response,
    Result,
    ResultError,
)

T0 = 1764160000.0  # 2025-11-26T12:26:40Z
DAY = 86400.0


def _resp(ts: float, status: int, body: bytes, ctype: str = "application/json") -> Response:
    return Response(
        ts=ts,
        end_ts=ts + 0.004,
        version="1.1",
        headers=(("Content-Type", ctype), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")),
        body=body,
        body_len=len(body),
        status=status,
        reason="OK" if status < 400 else "ERR",
    )


def make_pair(i: int, rng: random.Random, days: int = 2) -> tuple[Exchange, Result]:
    ts = T0 + ((i // 7) % days) * DAY + i * 0.001
    kind = i % 10
    user = rng.randrange(1000)
    if kind < 5:
        method, target = "GET", f"/users/{user}"
        pbody = {
            "id": user,
            "name": f"user{user}",
            "tier": rng.choice(["a", "b", "c"]),
            "request_id": f"{rng.getrandbits(64):016x}",
            "score": rng.random(),
        }
        sbody = dict(pbody, request_id=f"{rng.getrandbits(64):016x}")
        if rng.random() < 0.3:
            sbody["tier"] = "z"  # the shadow's regression
        p = _resp(ts, 200, orjson.dumps(pbody))
        s = _resp(ts + 1, 200, orjson.dumps(sbody))
    elif kind < 8:
        method, target = "POST", "/v1/predict?x=1"
        out = {"label": rng.choice(["cat", "dog"]), "p": round(rng.random(), 3)}
        p = _resp(ts, 200, orjson.dumps(out))
        s = _resp(ts + 1, 200 if rng.random() > 0.05 else 503, orjson.dumps(out))
    elif kind == 8:
        method, target = "GET", "/static/logo.png"
        blob = bytes(rng.getrandbits(8) for _ in range(64)) + b"\xff\xfe"
        p = _resp(ts, 200, blob, "image/png")
        s = _resp(ts + 1, 200, blob, "image/png")
    else:
        method, target = "GET", "/health"
        p = _resp(ts, 200, b"ok", "text/plain")
        s = None
    req_body = b'{"q": 1}' if method == "POST" else b""
    req = Request(
        ts=ts,
        end_ts=ts + 0.001,
        version="1.1",
        headers=(("Host", "svc"), ("X-Trace", str(i))),
        body=req_body,
        body_len=len(req_body),
        method=method,
        target=target,
    )
    primary = None if i % 97 == 0 else p
    ex = Exchange(
        id=f"ex{i:08d}",
        client=f"10.0.0.{i % 7}:4{i % 1000:04d}",
        server="10.0.1.1:80",
        index=i % 5,
        request=req,
        response=primary,
        anomalies=("gap",) if i % 53 == 0 else (),
        ttfb_ms=None if primary is None else 2.0 + rng.random(),
        total_ms=None if primary is None else 3.0 + rng.expovariate(0.3),
    )
    err = ResultError("timeout", "no answer in 5s") if s is None else None
    res = Result(
        exchange_id=ex.id,
        target=f"http://10.0.2.1:80{target}",
        scheduled=ts + 1,
        sent=ts + 1.001,
        response=s,
        ttfb_ms=None if s is None else 2.5,
        total_ms=None if s is None else 3.5 + rng.expovariate(0.25),
        error=err,
        extra={"agent": "a1"} if i % 11 == 0 else {},
    )
    return ex, res


def enrich(i: int, ex: Exchange, res: Result) -> tuple[Exchange, Result]:
    """The pair with the optional stream fields set, in turn: an HTTP/2 stream (reset, trailers),
    a gRPC call on it (binary and text messages, a status, both sides), chunk times of a
    streamed body (both sides), a TLS handshake; every fourth pair left plain."""
    kind = i % 4
    if kind == 3:
        return ex, res
    h2 = H2Stream(2 * i + 1, "reset" if i % 3 == 0 else "complete", 8 if i % 3 == 0 else None, 0, 1)
    if kind == 0:
        call = GrpcCall(
            "pkg.Svc",
            f"M{i % 5}",
            (GrpcMessage(b"\x00\xffreq" + bytes([i % 256]), 6, compressed=i % 2 == 0),),
            (GrpcMessage(b"ok", 2), GrpcMessage(b"\xfe" * 3, 40, truncated=True)),
            1,
            2,
            0 if i % 8 else 14,
            None if i % 8 else "unavailable",
        )
        shadow = dataclasses.replace(call, status=0, message=None, response_messages=())
        ex = dataclasses.replace(ex, h2=h2, grpc=call)
        res = dataclasses.replace(res, grpc=shadow, tls_handshake_ms=1.25 + i % 7)
    elif kind == 1:
        t = ex.ts
        ex = dataclasses.replace(ex, h2=h2, chunks=((5, t + 0.001), (12, t + 0.25)))
        res = dataclasses.replace(res, chunks=((3, t + 1.5), (9, t + 1.75), (12, t + 2.0)))
    else:
        res = dataclasses.replace(res, tls_handshake_ms=0.5)
    return ex, res


def pairs(
    n: int, seed: int = 7, start: int = 0, rich: bool = False
) -> Iterator[tuple[Exchange, Result]]:
    rng = random.Random(seed)
    for i in range(start, start + n):
        ex, res = make_pair(i, rng)
        yield enrich(i, ex, res) if rich else (ex, res)


def write_run(
    directory: str, n: int, seed: int = 7, gz: bool = False, rich: bool = False
) -> tuple[str, str]:
    """exchanges.jsonl and results.jsonl of ``n`` pairs in ``directory`` (results lag a little,
    as a replay's completion order does)."""
    suffix = ".jsonl.gz" if gz else ".jsonl"
    ex_path, res_path = f"{directory}/exchanges{suffix}", f"{directory}/results{suffix}"
    held: list[Result] = []
    with JsonlWriter(ex_path) as xw, JsonlWriter(res_path) as rw:
        for ex, res in pairs(n, seed, rich=rich):
            xw.write(ex.to_json())
            held.append(res)
            if len(held) >= 3:
                rw.write(held.pop(1).to_json())
        for r in held:
            rw.write(r.to_json())
    return ex_path, res_path


def write_lake(root: str, n: int, block: int = 100_000, seed: int = 7) -> int:
    """A lake of ``n`` pairs made directly as Parquet (scripts/bench_lake_scale.sh): ``block``
    generated pairs written by LakeWriter, then copies of its files with the exchange ids made
    unique (``ID-k``), until ``n`` rows. Returns the rows written. Minutes for millions of
    pairs, where generating each pair would take tens of minutes."""
    import os

    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from shadowtap.lake.writer import LakeWriter

    first = min(n, block)
    with LakeWriter(root, host="bench", rows_per_file=first) as w:
        for ex, res in pairs(first, seed):
            w.add(ex, res)
    base = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)
    tables = [(f, pq.read_table(f)) for f in base]
    written, k = first, 0
    while written < n:
        k += 1
        for f, t in tables:
            take = min(t.num_rows, n - written)
            if take <= 0:
                break
            t = t.slice(0, take)
            ids = pc.binary_join_element_wise(t["exchange_id"], pa.scalar(str(k)), "-")
            t = t.set_column(t.schema.get_field_index("exchange_id"), "exchange_id", ids)
            out = os.path.join(os.path.dirname(f), f"copy{k:05d}-{os.path.basename(f)}")
            pq.write_table(t, out, row_group_size=64 * 1024)
            os.chmod(out, 0o600)
            written += take
    return written


def counts(c) -> dict:
    """Everything a Comparison counts (what merge keeps exactly), endpoint by endpoint."""

    def agg(a) -> dict:
        return {
            "pairs": a.pairs,
            "compared": a.compared,
            "identical": a.identical,
            "baseline_compared": a.baseline_compared,
            "outcomes": (dict(a.primary_outcomes), dict(a.shadow_outcomes)),
            "changes": (dict(a.new_failures), dict(a.recoveries)),
            "status_pairs": dict(a.status_pairs),
            "sampled": (a.lat_primary.count, a.lat_shadow.count, a.values.count),
            "fields": {
                p: (
                    f.diff_pairs,
                    f.baseline_pairs,
                    dict(f.kinds),
                    f.volatility.n,
                    dict(f.volatility.shapes),
                    f.volatility.ints,
                    f.volatility.echoed,
                )
                for p, f in a.fields.items()
            },
        }

    c._fold_endpoints()
    return {
        "overall": agg(c._overall),
        **{n: agg(a) for n, a in c._endpoints.items()},
        "unmatched": (c.unmatched_exchanges, c.unmatched_results, c.input_error_count),
    }


def essence(report: dict) -> dict:
    """What two engines' reports must share exactly: the verdict and every count and rate (not
    the generation time, nor which samples were kept, nor sample-based statistics)."""
    report = as_json(report)  # a typed Report (compare/report.py), or its JSON already
    s = report["summary"]
    return {
        "verdict": (report["verdict"]["result"], report["verdict"]["exit_code"]),
        "summary": {
            k: s[k]
            for k in (
                "pairs",
                "compared",
                "identical",
                "endpoints",
                "unmatched_exchanges",
                "unmatched_results",
                "input_errors",
            )
        },
        "errors": s["errors"],
        "noise": sorted((n["endpoint"], n["path"]) for n in report["noise"]),
        "endpoints": sorted(
            (
                e["endpoint"],
                e["pairs"],
                e["compared"],
                e["identical"],
                tuple(
                    sorted(
                        (
                            f["path"],
                            f["diff_pairs"],
                            round(f["rate"], 12),
                            f["noise"] is None,
                            tuple(sorted(f["kinds"].items())),
                        )
                        for f in e["fields"]
                    )
                ),
                tuple(
                    sorted((p["primary"], p["shadow"], p["count"]) for p in e["status"]["pairs"])
                ),
            )
            for e in report["endpoints"]
        ),
    }
