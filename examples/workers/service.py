"""A small service's commands, served by ringport through a worker pool (docs/workers.md).

    [[worker]]
    name = "py"
    run = ["python3", "examples/workers/service.py"]
    commands = [
      { name = "greet", arity = 2, summary = "Greets someone." },
      { name = "wordcount", arity = 2, summary = "Counts the words of a text." },
      { name = "primes", arity = 2, summary = "Counts the primes below n (CPU-bound)." },
      { name = "later", arity = 3, summary = "Answers after a delay (out of order)." },
      { name = "profile", arity = 1, summary = "The caller, as a map." },
    ]
"""

import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from resp_worker import Error, run  # noqa: E402


def greet(user, args):
    return f"Hello, {args[0].decode(errors='replace')}!"


def wordcount(user, args):
    return len(args[0].split())


def primes(user, args):
    n = int(args[0])
    if not 0 <= n <= 10_000_000:
        raise Error("ERR n must be between 0 and 10000000")
    sieve = bytearray([1]) * max(n, 2)
    sieve[0:2] = b"\x00\x00"
    for i in range(2, int(n ** 0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytearray(len(sieve[i * i :: i]))
    return sum(sieve[:n])


async def later(user, args):
    await asyncio.sleep(int(args[0]) / 1000)
    return bytes(args[1])


def profile(user, args):
    return {"user": user, "worker": int(os.environ.get("RINGPORT_WORKER_INDEX", "0"))}


run({"greet": greet, "wordcount": wordcount, "primes": primes, "later": later, "profile": profile})
