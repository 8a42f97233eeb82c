"""The seed design a worker pool replaces: one Python asyncio server that holds every session
itself and runs the commands in Python, for bench/worker-compare.sh. It speaks enough RESP for
redis-benchmark and ringport-bench: AUTH, HELLO 2, PING, QUIT, CONFIG GET (empty), and the same
commands as examples/workers/service.py (GREET, WORDCOUNT).

Usage: python3 bench/seed_asyncio.py PORT USER PASSWORD
"""

import asyncio
import sys


def greet(args):
    return b"+Hello, " + args[0] + b"!\r\n"


def wordcount(args):
    return b":%d\r\n" % len(args[0].split())


COMMANDS = {b"greet": (2, greet), b"wordcount": (2, wordcount)}


async def read_command(reader):
    line = await reader.readline()
    if not line:
        return None
    if not line.startswith(b"*"):
        return line.split()
    args = []
    for _ in range(int(line[1:])):
        header = await reader.readline()
        args.append((await reader.readexactly(int(header[1:]) + 2))[:-2])
    return args


async def session(reader, writer, user, password):
    authed = False
    try:
        while (args := await read_command(reader)) is not None:
            if not args:
                continue
            name = args[0].lower()
            if name == b"auth":
                ok = args[1:] in ([password], [user, password])
                authed = authed or ok
                writer.write(b"+OK\r\n" if ok else b"-WRONGPASS invalid username-password pair\r\n")
            elif name == b"hello":
                writer.write(b"*0\r\n")
            elif name == b"config":
                writer.write(b"*0\r\n")
            elif name == b"quit":
                writer.write(b"+OK\r\n")
                break
            elif not authed:
                writer.write(b"-NOAUTH Authentication required.\r\n")
            elif name == b"ping":
                writer.write(b"+PONG\r\n")
            elif name in COMMANDS and len(args) == COMMANDS[name][0]:
                writer.write(COMMANDS[name][1](args[1:]))
            else:
                writer.write(b"-ERR unknown command or wrong arguments\r\n")
            if reader._buffer:  # more pipelined commands: answer them in one write
                continue
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main(port, user, password):
    server = await asyncio.start_server(
        lambda r, w: session(r, w, user, password), "127.0.0.1", port, backlog=4096
    )
    print(f"seed listening on 127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main(int(sys.argv[1]), sys.argv[2].encode(), sys.argv[3].encode()))
