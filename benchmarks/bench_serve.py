"""How fast does ``gptlab serve`` answer many clients at once?

Starts ``python -m gptlab.serve`` (the reference model, CPU, one torch thread) in a subprocess
on a free loopback port, then sends ``--requests`` streaming chat requests, ``--concurrency``
at a time, each for ``--max-tokens`` tokens with its own seed. The server generates one
request at a time, so concurrency shows up as queueing: latency grows with it while the
throughput stays that of one model. Prints requests/s, p50/p95 latency, p50/p95 time to the
first token, and tokens/s per stream (while it is being generated), and writes them to
benchmarks/results_serve.md.

    python benchmarks/bench_serve.py                 # about half a minute on one CPU core
    python benchmarks/bench_serve.py --concurrency 1 # one client: no queueing
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import platform
import statistics
import time
from dataclasses import dataclass

import httpx
import torch

from gptlab.serve.launcher import launch
from gptlab.utils import atomic_write

RESULTS = pathlib.Path(__file__).with_name("results_serve.md")
MODEL = "gptlab-reference"


@dataclass
class Timing:
    latency: float  # request sent -> stream ended
    first_token: float  # request sent -> first content
    tokens: int  # completion tokens (from the usage chunk)
    generating: float  # first content -> stream ended


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def one_request(client: httpx.AsyncClient, i: int, max_tokens: int) -> Timing:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Speak, citizen {i}."}],
        "max_tokens": max_tokens,
        "seed": i,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first = None
    tokens = 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if first is None and any(c["delta"].get("content") for c in chunk["choices"]):
                first = time.perf_counter()
    end = time.perf_counter()
    first = end if first is None else first
    return Timing(end - start, first - start, tokens, end - first)


async def load(base_url: str, requests: int, concurrency: int, max_tokens: int) -> list[Timing]:
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=300) as client:

        async def limited(i: int) -> Timing:
            async with limit:
                return await one_request(client, i, max_tokens)

        return await asyncio.gather(*(limited(i) for i in range(requests)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    if min(args.requests, args.concurrency, args.max_tokens) < 1:
        parser.error("--requests, --concurrency and --max-tokens must be >= 1")

    extra = ["--max-queue", str(args.concurrency + 1)]
    with launch("reference", threads=1, extra_args=extra) as server:
        asyncio.run(load(server.base_url, 2, 1, 4))  # warm up
        start = time.perf_counter()
        timings = asyncio.run(
            load(server.base_url, args.requests, args.concurrency, args.max_tokens)
        )
        wall = time.perf_counter() - start

    latency = [t.latency for t in timings]
    first = [t.first_token for t in timings]
    per_stream = [t.tokens / t.generating for t in timings if t.generating > 0 and t.tokens]
    total_tokens = sum(t.tokens for t in timings)
    rows = [
        ("requests/s", f"{len(timings) / wall:.2f}"),
        (
            "latency p50 / p95 (s)",
            f"{percentile(latency, 0.5):.3f} / {percentile(latency, 0.95):.3f}",
        ),
        (
            "first token p50 / p95 (s)",
            f"{percentile(first, 0.5):.3f} / {percentile(first, 0.95):.3f}",
        ),
        ("tokens/s per stream (median)", f"{statistics.median(per_stream):.1f}"),
        ("tokens/s, all streams", f"{total_tokens / wall:.1f}"),
    ]
    header = (
        f"{args.requests} streaming chat requests, {args.concurrency} at a time, "
        f"max_tokens={args.max_tokens}, reference model (2.6M parameters) on "
        f"{platform.machine()} CPU, 1 torch thread, one generation at a time; "
        f"torch {torch.__version__}, Python {platform.python_version()}."
    )
    lines = [
        "# Serving speed (benchmarks/bench_serve.py)",
        "",
        header,
        "",
        "| measure | value |",
        "|---|---:|",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
        "The server runs one generation at a time: with N clients a request waits for about",
        "N - 1 others, so latency and time to first token grow with concurrency while tokens/s",
        "per stream stays that of one model. Timings vary with the machine and its load.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    with atomic_write(RESULTS, "w", encoding="utf-8") as handle:
        handle.write(text)


if __name__ == "__main__":
    main()
