"""Exchanges out of a logged byte exchange, as the Extractor makes them from a stream (the same
fields; ids from the endpoints and the position), for tests that start from relayed traffic."""

from __future__ import annotations

from shadowtap.records import Exchange, exchange_id
from shadowtap.wire.http2 import Conversation, Event


def exchanges(
    log, client: str = "127.0.0.1:50000", server: str = "127.0.0.1:50051"
) -> list[Exchange]:
    conv = Conversation()
    done = []
    for fc, ts, data in log:
        conv.data(fc, ts, data)
        done += [st for ev, st in conv.events if ev == Event.DONE and not st.void]
        conv.events.clear()
    conv.end(True, log[-1][1])
    conv.end(False, log[-1][1])
    conv.close(log[-1][1])
    done += [st for ev, st in conv.events if ev == Event.DONE and not st.void]
    out = []
    t0 = log[0][1]
    for st in sorted(done, key=lambda s: s.index):
        req, resp = st.request, st.response
        ttfb = total = None
        if req is not None and resp is not None:
            ttfb = round((resp.ts - req.end_ts) * 1000.0, 3)
            total = round((resp.end_ts - req.ts) * 1000.0, 3)
        out.append(
            Exchange(
                exchange_id(client, server, t0, st.index),
                client,
                server,
                st.index,
                req,
                resp,
                tuple(st.anomalies),
                ttfb,
                total,
                st.h2,
                st.grpc,
            )
        )
    return out
