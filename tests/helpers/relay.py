"""A TCP fault relay for the tests: clients connect to the relay, the relay to the real server.

    with Relay("127.0.0.1", server_port) as relay:
        url = f"grpc://127.0.0.1:{relay.port}"
        relay.freeze()     # half-open: connections stay up, nothing passes either way (a node lost without a RST)
        relay.thaw()       # bytes flow again on the same connections
        relay.latency(0.2) # every chunk waits 0.2 s before it is passed on
        relay.reset()      # every open connection is cut with a TCP RST (SO_LINGER 0), as a failover does

asyncio in a thread of its own; stopped (and every connection closed) on exit.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading


class Relay:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.loop = asyncio.new_event_loop()
        self.flowing = asyncio.Event()
        self.delay = 0.0
        self.connections: set[asyncio.StreamWriter] = set()
        self.accepted = 0
        self.port = 0
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Relay:
        self._thread.start()
        self._call(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)

    def freeze(self) -> None:
        self._call(self._set(False))

    def thaw(self) -> None:
        self._call(self._set(True))

    def latency(self, seconds: float) -> None:
        self.delay = seconds

    def reset(self) -> None:
        self._call(self._reset())

    def _call(self, coro) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    async def _start(self) -> None:
        self.flowing.set()
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        self.server.close()
        await self._reset()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _set(self, flowing: bool) -> None:
        self.flowing.set() if flowing else self.flowing.clear()

    async def _reset(self) -> None:
        for writer in list(self.connections):
            sock = writer.get_extra_info("socket")
            if sock is not None:  # close with RST, not FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        self.connections.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)
        for w in (writer, up_writer):
            self.connections.discard(w)
            w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            await self.flowing.wait()  # frozen: hold the bytes (neither end hears anything, neither is closed)
            if self.delay:
                await asyncio.sleep(self.delay)
            await self.flowing.wait()
            writer.write(data)
            await writer.drain()
        writer.transport.abort()
