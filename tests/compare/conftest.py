"""Crafted primary/shadow pairs for the compare tests: ``craft`` builds exchanges and results."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from shadowtap.compare.report import FieldReport, Report
from shadowtap.records import Exchange, Request, Response, Result, ResultError

T0 = 1764160000.0  # 2025-11-26: timestamps in bodies are compared to the exchange's own time


class Craft:
    T0 = T0

    @staticmethod
    def response(
        body: Any = None,
        status: int = 200,
        headers: tuple[tuple[str, str], ...] = (),
        raw: bytes | None = None,
        content_type: str | None = "application/json",
        ts: float = T0,
    ) -> Response:
        data = raw if raw is not None else (orjson.dumps(body) if body is not None else b"")
        hdrs = ((("Content-Type", content_type),) if content_type else ()) + tuple(headers)
        return Response(
            ts=ts,
            end_ts=ts + 0.01,
            version="1.1",
            headers=hdrs,
            body=data,
            body_len=len(data),
            status=status,
        )

    @staticmethod
    def exchange(
        i: int,
        response: Response | None,
        *,
        method: str = "GET",
        target: str | None = None,
        latency_ms: float | None = 10.0,
        req_headers: tuple[tuple[str, str], ...] = (),
    ) -> Exchange:
        ts = T0 + i
        req = Request(
            ts=ts,
            end_ts=ts,
            version="1.1",
            headers=(("Host", "svc"),) + req_headers,
            method=method,
            target=target or f"/items/{i}",
        )
        return Exchange(
            id=f"ex{i:06d}",
            client="10.0.0.1:40000",
            server="10.0.0.2:80",
            index=i,
            request=req,
            response=response,
            total_ms=latency_ms,
            ttfb_ms=latency_ms,
        )

    @staticmethod
    def result(
        i: int,
        response: Response | None,
        *,
        latency_ms: float | None = 10.0,
        error: str | None = None,
        copy: int = 0,
    ) -> Result:
        ts = T0 + i
        return Result(
            exchange_id=f"ex{i:06d}",
            target="http://127.0.0.1:1/",
            scheduled=ts,
            sent=ts,
            response=response,
            total_ms=latency_ms,
            ttfb_ms=latency_ms,
            error=ResultError(error, "crafted") if error else None,
            copy=copy,
        )

    @staticmethod
    def run(n: int, make: Any, config: Any = None, baseline: bool = False) -> Report:
        """Feed ``make(i) -> (exchange, result[, baseline])`` for i < n to a Comparison and return
        its snapshot."""
        from shadowtap.compare.aggregate import Comparison

        c = Comparison(config, baseline=baseline)
        for i in range(n):
            c.add(*make(i))
        return c.snapshot()

    @staticmethod
    def field(report: Report, path: str, endpoint: str | None = None) -> FieldReport | None:
        for e in report.endpoints:
            if endpoint is None or e.endpoint == endpoint:
                for f in e.fields:
                    if f.path == path:
                        return f
        return None

    @staticmethod
    def iso(ts: float) -> str:
        return (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"
        )


@pytest.fixture
def craft() -> type[Craft]:
    return Craft
