"""A hostile HTTP server on loopback for the replay client's and the mirror's bounds: a raw asyncio
socket server (in a thread with its own loop) whose answer depends on the request's path:

- ``/headers-forever``: a status line, then header lines as fast as the socket takes them, forever;
- ``/value-forever``: one header whose value never ends;
- ``/reason-forever``: a status line whose reason phrase never ends;
- ``/interim-forever``: ``100 Continue`` answers, forever;
- ``/many-headers``: 5,000 small headers, then a normal end (a finite head over the count cap);
- ``/secret``: a login answer with a Set-Cookie and an access token (hostile_pcaps.SECRET_RESPONSE);
- anything else: ``200 OK`` with a small body (the run goes on after the hostile ones).

Every forever-sender stops when the peer closes (a write fails) or after ``MAX_SECONDS``.
"""

from __future__ import annotations

import asyncio
import threading
import time

MAX_SECONDS = 30.0
_PIECE = 64 << 10


class HostileServer:
    def __init__(self) -> None:
        self.paths: list[str] = []
        self.bytes_sent = 0
        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0)
        )
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode("latin-1")
                self.paths.append(path)
                if not await self._answer(path, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def _flood(self, writer: asyncio.StreamWriter, first: bytes, piece: bytes) -> bool:
        writer.write(first)
        deadline = time.monotonic() + MAX_SECONDS
        while time.monotonic() < deadline:
            writer.write(piece)
            self.bytes_sent += len(piece)
            await writer.drain()  # raises once the client closed
        return False

    async def _answer(self, path: str, writer: asyncio.StreamWriter) -> bool:
        if path.startswith("/headers-forever"):
            return await self._flood(
                writer, b"HTTP/1.1 200 OK\r\n", b"X-Flood: yes\r\n" * (_PIECE // 14)
            )
        if path.startswith("/value-forever"):
            return await self._flood(writer, b"HTTP/1.1 200 OK\r\nX-Long: ", b"v" * _PIECE)
        if path.startswith("/reason-forever"):
            return await self._flood(writer, b"HTTP/1.1 200 O", b"K" * _PIECE)
        if path.startswith("/interim-forever"):
            return await self._flood(writer, b"", b"HTTP/1.1 100 Continue\r\n\r\n" * (_PIECE // 25))
        if path.startswith("/many-headers"):
            writer.write(
                b"HTTP/1.1 200 OK\r\n" + b"X-H: 1\r\n" * 5000 + b"Content-Length: 2\r\n\r\nok"
            )
            await writer.drain()
            return True
        if path.startswith("/secret"):
            from tests.support.hostile_pcaps import SECRET_RESPONSE

            writer.write(SECRET_RESPONSE)
            await writer.drain()
            return True
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok")
        await writer.drain()
        return True

    def close(self) -> None:
        self.server.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
