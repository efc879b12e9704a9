"""A trivial HTTP/1.1 endpoint on 127.0.0.1 for the engine's tests and benchmark: every request
gets `200 ok` at once (keep-alive), except that with `--stall S --stall-after T` the whole
server blocks for S seconds at the first request T seconds after the first one, as a stuck
process or a stop-the-world pause does.

    python tests/load/endpoint.py --port 18080 [--stall 0.5 --stall-after 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import time

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


class Endpoint(asyncio.Protocol):
    first: float | None = None
    stalled = False
    stall = 0.0
    stall_after = 0.0

    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b""

    def data_received(self, data):
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            self.buffer = self.buffer[end + 4:]
            now = time.monotonic()
            cls = type(self)
            if cls.first is None:
                cls.first = now
            if cls.stall and not cls.stalled and now - cls.first >= cls.stall_after:
                cls.stalled = True
                time.sleep(cls.stall)  # blocks every connection, like a frozen process
            self.transport.write(RESPONSE)


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Endpoint, "127.0.0.1", port, backlog=4096)
    print(f"listening on 127.0.0.1:{port}", flush=True)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stall", type=float, default=0.0)
    parser.add_argument("--stall-after", type=float, default=1.0)
    args = parser.parse_args()
    Endpoint.stall, Endpoint.stall_after = args.stall, args.stall_after
    try:
        asyncio.run(serve(args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
