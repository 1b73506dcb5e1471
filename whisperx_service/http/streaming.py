"""Streamed answers: each chunk's text as soon as it is decoded, then the whole result.

`/v1/audio/transcriptions` with `stream=true` answers OpenAI's Server-Sent Events
(`transcript.text.delta` per decoded chunk, in recording order; `transcript.text.segment` per
diarized segment for diarized_json; `transcript.text.done` with the full text and usage), which
the official client's `stream=True` iterates. `/transcribe` with `stream=true` answers
newline-delimited JSON: a `segment` line per decoded chunk, then one `result` line.

The upload is decoded before the answer starts, so a bad file is still a plain 4xx. A failure
later becomes one error event in the envelope. A client that goes away cancels the run: its
runner calls, its hold on the audio budget and its spool all go with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ..errors import ServiceError, internal_error
from ..params import TranscribeParams
from ..schema import AsrSegment
from ..text import join_words, tidy_text
from .envelope import REQUEST_ID_HEADER, Gateway, Transcribed, transcribe

logger = logging.getLogger("whisperx_service.streaming")


class _StreamUntilDisconnect(StreamingResponse):
    """A stream that ends as soon as the client leaves, not at its next write.

    Under ASGI 2.4 servers Starlette notices a disconnect only when a write fails; between two
    events (diarizing a long recording) that can be never, and the run would go on for nobody.
    Below 2.4 Starlette also listens for `http.disconnect` and cancels the body: use that path."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope = {**scope, "asgi": {**scope.get("asgi", {}), "spec_version": "2.3"}}
        await super().__call__(scope, receive, send)


class OrderedChunks:
    """Chunks' segments, handed on in recording order as they settle (they settle in any order)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[AsrSegment] = asyncio.Queue()
        self._settled: dict[int, list[AsrSegment]] = {}
        self._next = 0

    def __call__(self, index: int, total: int, segments: list[AsrSegment]) -> None:
        self._settled[index] = segments
        while self._next in self._settled:
            for segment in self._settled.pop(self._next):
                self.queue.put_nowait(segment)
            self._next += 1


async def _run_streaming(gateway: Gateway, request_id: str, audio: np.ndarray, params: TranscribeParams,
                         ) -> AsyncIterator[AsrSegment | Transcribed]:
    """The pipeline's segments as they settle, then its result; cancelled when the consumer stops."""
    chunks = OrderedChunks()

    async def decoded() -> np.ndarray:
        return audio

    task = asyncio.ensure_future(transcribe(gateway, request_id, decoded(), params, on_text=chunks))
    try:
        while True:
            getter = asyncio.ensure_future(chunks.queue.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield getter.result()
                continue
            getter.cancel()
            break
        while not chunks.queue.empty():
            yield chunks.queue.get_nowait()
        yield task.result()
    finally:
        if not task.done():
            logger.info("stream closed before its result: cancelling the run")
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def _events(source: AsyncIterator[AsrSegment | Transcribed], request_id: str,
                  on_segment: Callable[[AsrSegment], dict[str, Any] | None],
                  on_result: Callable[[Transcribed], list[dict[str, Any]]]) -> AsyncIterator[dict[str, Any]]:
    try:
        async for item in source:
            if isinstance(item, AsrSegment):
                event = on_segment(item)
                if event is not None:
                    yield event
            else:
                for event in on_result(item):
                    yield event
    except ServiceError as error:
        logger.info("stream ended with %s: %s", error.code, error.message)
        yield error.to_body(request_id)
    except Exception:  # noqa: BLE001 - an unforeseen failure: details in the log only, as for a 500
        logger.exception("stream failed")
        yield internal_error().to_body(request_id)


def openai_events(gateway: Gateway, request_id: str, audio: np.ndarray, params: TranscribeParams,
                  result_events: Callable[[Transcribed], list[dict[str, Any]]]) -> StreamingResponse:
    """OpenAI's transcription stream: text deltas in recording order, then `result_events`."""
    spoken: list[str] = []

    def delta(segment: AsrSegment) -> dict[str, Any] | None:
        language = segment.language or params.language
        text = tidy_text(segment.text, language)
        if not text:
            return None
        piece = join_words([spoken[-1], text], language)[len(spoken[-1]):] if spoken else text
        spoken.append(text)
        return {"type": "transcript.text.delta", "delta": piece}

    async def body() -> AsyncIterator[bytes]:
        async for event in _events(_run_streaming(gateway, request_id, audio, params), request_id,
                                   delta, result_events):
            yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()

    return _StreamUntilDisconnect(body(), media_type="text/event-stream",
                             headers={REQUEST_ID_HEADER: request_id, "cache-control": "no-cache"})


def ndjson_events(gateway: Gateway, request_id: str, audio: np.ndarray, params: TranscribeParams,
                  ) -> StreamingResponse:
    """/transcribe's stream: a `segment` line per decoded chunk, then the `result` line."""

    def segment(item: AsrSegment) -> dict[str, Any]:
        return {"type": "segment", "start": item.start, "end": item.end,
                "text": tidy_text(item.text, item.language or params.language)}

    def result(done: Transcribed) -> list[dict[str, Any]]:
        return [{"type": "result", "result": done.response.model_dump(mode="json")}]

    async def body() -> AsyncIterator[bytes]:
        async for event in _events(_run_streaming(gateway, request_id, audio, params), request_id,
                                   segment, result):
            yield (json.dumps(event, ensure_ascii=False) + "\n").encode()

    return _StreamUntilDisconnect(body(), media_type="application/x-ndjson",
                                  headers={REQUEST_ID_HEADER: request_id})

