"""A forward proxy on 127.0.0.1, as a corporate network has one: every host name is
reached through it (each resolves, for the proxy alone, to 127.0.0.1), plain http
forwarded with its request line rewritten, https through CONNECT. Each request line
and its headers are recorded; `refuse` makes it answer 403 (or `refusal`) to everything."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from tests.loop_thread import LoopThread


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str] = field(default_factory=dict)


class ForwardProxy(LoopThread):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Seen] = []
        self.refuse = False
        self.refusal = b"403 Forbidden\r\n"  # what `refuse` answers: its status, any headers
        self.refused_methods: set[str] = set()  # refused as `refuse` is, other methods let by
        self.refused_unread = False  # refused at once, its body unread (a limit on its size)
        self.held_methods: set[str] = set()  # their body never read, held till the close
        self.held = threading.Event()  # one such request came
        self.port = 0
        self._server: asyncio.Server | None = None
        # Every exchange's task, held: asyncio keeps only a weak reference to a task, so
        # one waiting on a connection nothing else refers to was collected mid-exchange,
        # its unclosed writer's ResourceWarning failing whichever test ran at the time.
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line, *lines = head.decode("latin-1").split("\r\n")
            method, target, version = line.split(" ")
            headers = dict(item.split(": ", 1) for item in lines if item)
            self.seen.append(Seen(method, target, headers))
            if method in self.held_methods:  # an uplink that stalls, a front that hangs
                self.held.set()
                await asyncio.Event().wait()
            if self.refuse or method in self.refused_methods:  # its body read first
                if not self.refused_unread:
                    await reader.readexactly(int(headers.get("Content-Length", 0)))
                writer.write(b"HTTP/1.1 " + self.refusal + b"Content-Length: 0\r\n"
                             b"Connection: close\r\n\r\n")
                return
            if method == "CONNECT":
                port = int(target.rpartition(":")[2])
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                parts = urlsplit(target)
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", parts.port)
                path = parts.path + (f"?{parts.query}" if parts.query else "")
                kept = "".join(f"{k}: {v}\r\n" for k, v in headers.items()
                               if k.lower() not in ("connection", "proxy-connection",
                                                   "proxy-authorization"))
                up_writer.write(f"{method} {path} {version}\r\n{kept}Connection: close\r\n\r\n"
                                .encode("latin-1"))
            onward = asyncio.ensure_future(_pipe(reader, up_writer))
            try:  # the answer ends the exchange: the upstream closes (Connection: close)
                await _pipe(up_reader, writer)
            finally:
                onward.cancel()
                up_writer.close()
        except (OSError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(2**16):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        pass
