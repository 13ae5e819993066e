"""A real HTTP/2 client and server (python-hyper's ``h2`` connection objects) talking in memory:
every byte either side writes is logged as ``(from_client, ts, bytes)`` in wire order, for the
passive parser to read. The timestamps are a counter (one step per write), so timings are exact.
"""

from __future__ import annotations

import struct

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from shadowtap.wire.http2 import Conversation, Event, Stream


class H2Pair:
    def __init__(
        self, *, client_settings: dict | None = None, server_settings: dict | None = None
    ) -> None:
        self.c = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.s = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.log: list[tuple[bool, float, bytes]] = []
        self.t = 1000.0
        self.next_sid = 1
        self.c.initiate_connection()
        if client_settings:
            self.c.update_settings(client_settings)
        self.flush()
        self.s.initiate_connection()
        if server_settings:
            self.s.update_settings(server_settings)
        self.flush()

    def flush(self) -> None:
        """Move what each side wrote to the other, logging it; until both are quiet."""
        for _ in range(20):
            moved = False
            for from_client, src, dst in ((True, self.c, self.s), (False, self.s, self.c)):
                data = src.data_to_send()
                if data:
                    moved = True
                    self.t += 0.001
                    self.log.append((from_client, self.t, data))
                    for ev in dst.receive_data(data):
                        # Give the window back, as a real peer does (long runs need it).
                        if isinstance(ev, h2.events.DataReceived) and ev.flow_controlled_length:
                            try:
                                n = ev.flow_controlled_length
                                dst.acknowledge_received_data(n, ev.stream_id)
                            except h2.exceptions.StreamClosedError:
                                dst.increment_flow_control_window(ev.flow_controlled_length)
            if not moved:
                return

    def raw(self, from_client: bool, data: bytes) -> None:
        """Bytes written on the wire without either h2 object seeing them (crafted frames)."""
        self.t += 0.001
        self.log.append((from_client, self.t, data))

    # -- conveniences ---------------------------------------------------------------------------

    def request(
        self, headers: list[tuple[str, str]], body: bytes = b"", *, end: bool = True
    ) -> int:
        sid = self.next_sid
        self.next_sid += 2
        self.c.send_headers(sid, headers, end_stream=not body and end)
        if body:
            self.c.send_data(sid, body, end_stream=end)
        self.flush()
        return sid

    def respond(
        self,
        sid: int,
        headers: list[tuple[str, str]],
        body: bytes = b"",
        trailers: list[tuple[str, str]] | None = None,
    ) -> None:
        self.s.send_headers(sid, headers, end_stream=not body and not trailers)
        if body:
            self.s.send_data(sid, body, end_stream=not trailers)
        if trailers:
            self.s.send_headers(sid, trailers, end_stream=True)
        self.flush()


def grpc_frame(msg: bytes, compressed: bool = False) -> bytes:
    return struct.pack(">BI", int(compressed), len(msg)) + msg


def run(
    log: list[tuple[bool, float, bytes]],
    *,
    midstream: bool = False,
    max_body: int = 1 << 20,
    splits: list[int] | None = None,
) -> tuple[Conversation, list[Stream]]:
    """Feed a log to a Conversation (each write cut at the given offsets when ``splits``), end
    both directions, close; returns the conversation and the finished, non-void streams in
    the order they finished."""
    conv = Conversation(max_body=max_body, midstream=midstream)
    done: list[Stream] = []
    for from_client, ts, data in log:
        pieces = [data]
        if splits:
            pieces, last = [], 0
            for cut in sorted({c % (len(data) + 1) for c in splits}):
                pieces.append(data[last:cut])
                last = cut
            pieces.append(data[last:])
        for p in pieces:
            if p:
                conv.data(from_client, ts, p)
        done += _drain(conv)
    conv.end(True, 9e9)
    conv.end(False, 9e9)
    conv.close(9e9)
    done += _drain(conv)
    return conv, done


def _drain(conv: Conversation) -> list[Stream]:
    out = [st for ev, st in conv.events if ev == Event.DONE and not st.void]
    conv.events.clear()
    return out
