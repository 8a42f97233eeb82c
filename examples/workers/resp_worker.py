"""A ringport worker in plain Python (standard library only): the protocol of docs/workers.md.

ringport starts the worker with its stdin and stdout as pipes. Each request is a RESP array of
bulk strings [id, user, command, args...]; each reply is a RESP array [id, reply], where the
reply is any RESP value. A plain handler is answered at once; an async one runs as an asyncio
task, so a slow request does not hold up the others and replies may leave in any order.

Use it as a library: define handlers and call `run({"name": handler, ...})`. A handler takes
(user, args) and returns a value (or awaits one): str -> simple string, bytes -> bulk string,
int -> integer, None -> null, list/tuple -> array, dict -> map, float -> double,
bool -> boolean, an `Error` -> an error reply. An exception becomes an error reply too.
"""

import asyncio
import inspect
import sys


class Error(Exception):
    """Raise or return this to answer an error reply: Error("ERR something")."""


def encode(value, out):
    if isinstance(value, Error):
        text = str(value).replace("\r", " ").replace("\n", " ")
        out += b"-" + text.encode() + b"\r\n"
    elif isinstance(value, bool):
        out += b"#t\r\n" if value else b"#f\r\n"
    elif isinstance(value, int):
        out += b":%d\r\n" % value
    elif isinstance(value, float):
        out += b"," + repr(value).encode() + b"\r\n"
    elif isinstance(value, str):
        out += b"+" + value.replace("\r", " ").replace("\n", " ").encode() + b"\r\n"
    elif isinstance(value, (bytes, bytearray)):
        out += b"$%d\r\n" % len(value) + bytes(value) + b"\r\n"
    elif value is None:
        out += b"_\r\n"
    elif isinstance(value, dict):
        out += b"%%%d\r\n" % len(value)
        for k, v in value.items():
            encode(k, out)
            encode(v, out)
    elif isinstance(value, (list, tuple)):
        out += b"*%d\r\n" % len(value)
        for item in value:
            encode(item, out)
    else:
        raise TypeError(f"cannot send a {type(value).__name__} as RESP")


async def read_request(reader):
    """One [id, user, command, args...] array, or None at the end of input."""
    line = await reader.readline()
    if not line:
        return None
    if not line.startswith(b"*"):
        raise ValueError(f"expected an array, got {line!r}")
    parts = []
    for _ in range(int(line[1:])):
        header = await reader.readline()
        if not header.startswith(b"$"):
            raise ValueError(f"expected a bulk string, got {header!r}")
        data = await reader.readexactly(int(header[1:]) + 2)
        parts.append(data[:-2])
    return parts


def reply(request_id, value, out):
    out += b"*2\r\n"
    encode(request_id, out)
    encode(value, out)


def call(handlers, user, command, args):
    """The handler's value, or the error to answer; a coroutine for an async handler."""
    handler = handlers.get(command)
    if handler is None:
        return Error(f"ERR this worker has no command '{command}'")
    try:
        return handler(user, args)
    except Error as e:
        return e
    except Exception as e:  # the worker goes on: one command's bug answers that command only
        return Error(f"ERR {type(e).__name__}: {e}")


async def finish(request_id, pending):
    try:
        value = await pending
    except Error as e:
        value = e
    except Exception as e:
        value = Error(f"ERR {type(e).__name__}: {e}")
    out = bytearray()
    reply(request_id, value, out)
    sys.stdout.buffer.write(out)
    sys.stdout.buffer.flush()


async def serve(handlers):
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks = set()
    out = bytearray()
    while (request := await read_request(reader)) is not None:
        request_id, user, command, *args = request
        value = call(handlers, user.decode(), command.decode(), args)
        if inspect.isawaitable(value):
            # Slow work runs as a task: replies to later requests may leave first.
            task = asyncio.create_task(finish(int(request_id), value))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        else:
            reply(int(request_id), value, out)
        # Answer everything that came in one read with one write.
        if out and not reader._buffer:
            sys.stdout.buffer.write(out)
            sys.stdout.buffer.flush()
            out.clear()
    if out:
        sys.stdout.buffer.write(out)
        sys.stdout.buffer.flush()
    # stdin closed: ringport is stopping. Finish what was asked, then exit.
    if tasks:
        await asyncio.wait(tasks)


def run(handlers):
    asyncio.run(serve(handlers))
