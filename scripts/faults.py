"""Hostile clients and callback targets for scripts/faults.sh, on loopback only.

    faults.py MODE HOST PORT SECONDS [HOOK_PORT]

Runs one fault against verve at HOST:PORT for SECONDS, then prints what it did:
  slowloris   500 connections (opened over a second) dripping a request head one byte every 100 ms (reconnecting)
  idle        4000 connections opened over a second that send nothing (reconnecting when
              closed)
  malformed   8 workers sending junk: a 70 KiB header, a broken request line, a 100 MiB
              body declared and half sent, a bare newline, a header without a colon,
              a 30 KB request target
  callbacks   serves hostile callback targets on HOOK_PORT (/hang never answers, /drip sends
              one byte a second, /huge streams without end, /redirect points at loopback)
              until the phase ends, and registers 200 distinct ones per second with verve
"""

import asyncio
import sys
import time

mode, host, port, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
hook_port = int(sys.argv[5]) if len(sys.argv) > 5 else 0
deadline = time.monotonic() + seconds
stats = {}


def bump(key, n=1):
    stats[key] = stats.get(key, 0) + n


def running():
    return time.monotonic() < deadline


async def slowloris(i):
    head = b"GET /api/verve/accept?id=1 HTTP/1.1\r\nHost: x\r\nX-Drip: " + b"a" * 4000
    await asyncio.sleep(i / 500)  # opened over the first second
    while running():
        try:
            reader, writer = await asyncio.open_connection(host, port)
            bump("connections")
            for byte in head:
                if not running():
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.1)
            writer.close()
        except (ConnectionError, OSError):
            bump("cut by server")
            await asyncio.sleep(0.1)


async def idle(i):
    # Opened over the first second, as clients arriving, not as one burst of 4000.
    await asyncio.sleep(i / 4000)
    while running():
        try:
            reader, writer = await asyncio.open_connection(host, port)
            bump("connections")
            remaining = deadline - time.monotonic()
            if await asyncio.wait_for(reader.read(1), max(remaining, 0.01)) == b"":
                bump("closed by server")
            writer.close()
        except asyncio.TimeoutError:
            return
        except (ConnectionError, OSError):
            bump("refused or reset")
            await asyncio.sleep(0.1)


JUNK = [
    b"GET /api/verve/accept?id=1 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 70_000 + b"\r\n\r\n",
    b"GARBAGE\x00\xff / HTTP/9.9\r\n\r\n",
    b"POST /api/verve/accept?id=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\n\r\n"
    + b"c" * 65_536,
    b"\r\n\r\n",
    b"GET /api/verve/accept?id=1 HTTP/1.1\r\nno colon here\r\n\r\n",
    b"GET /api/verve/accept?id=" + b"9" * 30_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
]


async def malformed(worker):
    i = worker
    while running():
        payload = JUNK[i % len(JUNK)]
        i += 1
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(payload)
            await writer.drain()
            status = await asyncio.wait_for(reader.readline(), 5)
            bump("answered " + (status.split(b" ")[1].decode() if status.count(b" ") else "closed"))
            writer.close()
        except (ConnectionError, OSError, asyncio.TimeoutError):
            bump("reset")


async def hook(reader, writer):
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        path = head.split(b" ")[1]
        bump("callbacks " + path.split(b"?")[0].decode())
        if path.startswith(b"/hang"):
            # Never answer; hold the connection until verve gives up or the phase ends.
            await asyncio.wait_for(reader.read(), max(deadline - time.monotonic(), 0.01))
        elif path.startswith(b"/drip"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
            for _ in range(100):
                if not running():
                    break
                await writer.drain()
                await asyncio.sleep(1)
                writer.write(b"d")
        elif path.startswith(b"/huge"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n")
            chunk = b"h" * 65_536
            while running():
                writer.write(chunk)
                await writer.drain()
        else:
            writer.write(
                b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:%d/redirected\r\n"
                b"Content-Length: 0\r\n\r\n" % hook_port
            )
        await writer.drain()
    except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
        pass
    except asyncio.CancelledError:
        pass  # the phase is over
    finally:
        writer.close()


async def register():
    n = 0
    while running():
        try:
            reader, writer = await asyncio.open_connection(host, port)
            for _ in range(200):
                kind = ("hang", "drip", "huge", "redirect")[n % 4]
                endpoint = f"http%3A%2F%2F127.0.0.1%3A{hook_port}%2F{kind}%3Fn%3D{n}"
                writer.write(
                    f"GET /api/verve/accept?id={n}&endpoint={endpoint} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                )
                n += 1
            await writer.drain()
            answered = 0
            while answered < 200:
                line = await asyncio.wait_for(reader.readline(), 5)
                if not line:
                    break
                # Bodies ("ok") end without a newline: a status line follows on the same line.
                if b"HTTP/1.1 200" in line:
                    answered += 1
            writer.close()
            bump("endpoints registered", answered)
        except (ConnectionError, OSError, asyncio.TimeoutError):
            bump("register failed")
        await asyncio.sleep(1)


async def main():
    if mode == "slowloris":
        tasks = [slowloris(i) for i in range(500)]
    elif mode == "idle":
        tasks = [idle(i) for i in range(4000)]
    elif mode == "malformed":
        tasks = [malformed(w) for w in range(8)]
    elif mode == "callbacks":
        server = await asyncio.start_server(hook, "127.0.0.1", hook_port)
        tasks = [register()]
    else:
        sys.exit(f"unknown mode {mode}")
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), seconds + 10)
    if mode == "callbacks":
        server.close()
    print(f"{mode}: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.items())))


asyncio.run(main())
