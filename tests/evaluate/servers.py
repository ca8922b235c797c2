"""Real TCP servers on 127.0.0.1 (an ephemeral port), each in its own thread and event
loop, for replaying over TCP: a tiny line protocol written here, and the emulator core
driven by a real clock (what `serve` does, in a few lines)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator

from scriptgen.emulate import Close, Emulator, Machine, NeedData, Send

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.contextmanager
def serving(handler: Handler) -> Iterator[int]:
    """Run `handler` per connection on 127.0.0.1; yields the port."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, object] = {}

    async def start() -> None:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        box["server"] = server
        box["port"] = server.sockets[0].getsockname()[1]
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop)
    assert ready.wait(5)
    try:
        yield int(box["port"])  # type: ignore[call-overload]
    finally:
        async def stop() -> None:
            server = box["server"]
            assert isinstance(server, asyncio.Server)
            server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


BANNER = b"200 echo ready\r\n"


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Banner; "ECHO <text>" echoes the text; "QUIT" says bye and closes; "HUSH" gets no
    answer; anything else is an error line."""
    writer.write(BANNER)
    try:
        while line := await reader.readline():
            if line.startswith(b"ECHO "):
                writer.write(b"250 " + line[5:])
            elif line == b"QUIT\r\n":
                writer.write(b"221 bye\r\n")
                break
            elif line == b"HUSH\r\n":
                continue
            else:
                writer.write(b"500 what?\r\n")
            await writer.drain()
    finally:
        writer.close()


def emulating(machine: Machine) -> Handler:
    """A connection handler that runs the emulator core against the loop's clock."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        conn = Emulator(machine, loop.time())
        try:
            while True:
                wake_at = None
                while True:
                    event = conn.next_event(loop.time())
                    if isinstance(event, Send):
                        writer.write(event.data)
                    elif isinstance(event, Close):
                        return
                    elif isinstance(event, NeedData):
                        wake_at = event.wake_at
                        break
                await writer.drain()
                timeout = None if wake_at is None else max(0.0, wake_at - loop.time())
                try:
                    data = await asyncio.wait_for(reader.read(65536), timeout)
                except TimeoutError:
                    continue
                conn.receive_data(data, loop.time())
        finally:
            writer.close()

    return handle
