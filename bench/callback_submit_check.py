"""What the submit-time callback check costs a local-store job submit, side by side.

    .venv/bin/python bench/callback_submit_check.py [--mb 64] [--chunk-kb 64] [--repeat 5]

BentoML's ``<route>/submit`` reads the whole multipart body; `checked_submit` reads the callback
fields off the same body as it streams through (`CallbackFieldReader`, python-multipart). Three
arms over one body (random bytes as the recording, the callback fields after it, the order that
makes the reader scan everything), fed in uvicorn-sized chunks, in turns within each repeat:

- ``copy``: only collecting the chunks, what BentoML's ``request.body()`` does anyway;
- ``reader``: the callback reader alone (the added work);
- ``starlette``: Starlette's whole form parse of the same body, what a sync route pays.

Prints each arm's median seconds and MB/s, and the reader's cost as a share of the starlette parse.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Callable

from common import PROJECT  # noqa: F401 - puts the project on sys.path
from starlette.datastructures import Headers
from starlette.formparsers import MultiPartParser

from whisperx_service.http.callback_check import CallbackFieldReader

BOUNDARY = "----benchboundary7MA4YWxkTrZu0gW"


def body(megabytes: int) -> bytes:
    audio = os.urandom(megabytes * 2**20)
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"audio_file\"; filename=\"a.flac\"\r\n"
            "Content-Type: audio/flac\r\n\r\n").encode()
    tail = (f"\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"callback_url\"\r\n\r\n"
            f"https://hooks.example.com/done\r\n--{BOUNDARY}--\r\n").encode()
    return head + audio + tail


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def arm_copy(parts: list[bytes]) -> None:
    out = bytearray()
    for part in parts:
        out += part


def arm_reader(parts: list[bytes]) -> None:
    reader = CallbackFieldReader(f"multipart/form-data; boundary={BOUNDARY}")
    for part in parts:
        reader.feed(part)
    assert reader.finish() == {"callback_url": "https://hooks.example.com/done"}


def arm_starlette(parts: list[bytes]) -> None:
    async def stream():  # type: ignore[no-untyped-def]
        for part in parts:
            yield part

    async def parse() -> None:
        headers = Headers({"content-type": f"multipart/form-data; boundary={BOUNDARY}"})
        form = await MultiPartParser(headers, stream(), max_part_size=2**20).parse()
        assert form["callback_url"] == "https://hooks.example.com/done"
        await form.close()

    asyncio.run(parse())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=64)
    parser.add_argument("--chunk-kb", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    parts = chunks(body(args.mb), args.chunk_kb * 1024)
    arms: dict[str, Callable[[list[bytes]], None]] = {
        "copy": arm_copy, "reader": arm_reader, "starlette": arm_starlette}
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(args.repeat):
        for name, arm in arms.items():
            started = time.perf_counter()
            arm(parts)
            times[name].append(time.perf_counter() - started)
    print(f"{args.mb} MiB body in {args.chunk_kb}-KiB chunks, {args.repeat} repeats (median, min-max)")
    for name, seen in times.items():
        median = statistics.median(seen)
        print(f"  {name:9s} {median:7.3f} s  ({min(seen):.3f}-{max(seen):.3f})  {args.mb / median:8.0f} MiB/s")
    reader, starlette = statistics.median(times["reader"]), statistics.median(times["starlette"])
    print(f"reader / starlette parse: {reader / starlette:.2f}x")


if __name__ == "__main__":
    main()
