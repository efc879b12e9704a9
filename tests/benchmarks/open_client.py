"""A cheap open-model HTTP/1.1 load client for the benchmarks, run as its own process.

Requests go out at their intended times (constant rate) over a pool of keep-alive connections;
latency is measured from the intended start, so a slow server shows in every request it delayed
(no coordinated omission). Requests are pre-encoded bytes and responses are parsed just enough
(status line, Content-Length): the client must cost far less CPU than the server it measures,
which httpx (about 1 ms per request) did not. Prints one JSON line, including its own CPU time.

    python open_client.py [--host H] --port P --rate R --seconds S --requests FILE
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time

#: Idle connections are reused for less than the server's keep-alive timeout (uvicorn: 5 s).
KEEPALIVE_REUSE_S = 4.0


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
            break
    if length:
        await reader.readexactly(length)
    return status


async def run(host: str, port: int, rate: float, seconds: float, requests: list[bytes], max_conns: int) -> dict:
    loop = asyncio.get_running_loop()
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
    opened = 0
    slots = asyncio.Semaphore(max_conns)
    latencies: list[float] = []
    errors = {"http": 0, "io": 0}
    n = int(rate * seconds)

    def reusable() -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The most recently used connection the server has not closed: uvicorn closes one idle
        for 5 s, and a request written to it would fail through no fault of the server."""
        while idle:
            reader, writer, last = idle.pop()
            if not reader.at_eof() and time.monotonic() - last < KEEPALIVE_REUSE_S:
                return reader, writer
            writer.close()
        return None

    async def one(intended: float, payload: bytes) -> None:
        nonlocal opened
        async with slots:
            conn = reusable()
            try:
                if conn is None:
                    conn = await asyncio.open_connection(host, port)
                    opened += 1
                conn[1].write(payload)
                status = await _read_response(conn[0])
                idle.append((*conn, time.monotonic()))
                if status >= 400:
                    errors["http"] += 1
            except (OSError, asyncio.IncompleteReadError, ValueError):
                errors["io"] += 1
                if conn is not None:
                    conn[1].close()
        latencies.append(time.monotonic() - intended)

    cpu0 = _cpu()
    start = time.monotonic() + 0.02
    tasks = []
    for i in range(n):
        intended = start + i / rate
        delay = intended - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(loop.create_task(one(intended, requests[i % len(requests)])))
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - start
    for _reader, writer, _last in idle:
        writer.close()
    latencies.sort()
    pct = lambda q: round(latencies[min(len(latencies) - 1, int(q / 100 * len(latencies)))] * 1000, 2)  # noqa: E731
    return {"target_rps": rate, "achieved_rps": round(n / elapsed, 1), "requests": n,
            "errors": errors["http"] + errors["io"], "io_errors": errors["io"], "connections": opened,
            "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99), "max_ms": round(latencies[-1] * 1000, 2),
            "client_cpu_s": round(_cpu() - cpu0, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--requests", required=True, help="JSON list of raw HTTP/1.1 requests (latin-1 text)")
    parser.add_argument("--max-connections", type=int, default=256)
    args = parser.parse_args()
    with open(args.requests) as fh:
        requests = [r.encode("latin-1") for r in json.load(fh)]
    coro = run(args.host, args.port, args.rate, args.seconds, requests, args.max_connections)
    try:
        import uvloop

        result = uvloop.run(coro)
    except ImportError:
        result = asyncio.run(coro)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
