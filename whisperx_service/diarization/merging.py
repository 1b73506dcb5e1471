"""Model calls of concurrent diarizations merged into shared batches.

pyannote's pipeline is sequential code that calls its segmentation model window batch by window
batch and its embedding model row batch by row batch. The diarization runner runs each request's
pipeline on its own thread; a `CallMerger` stands in for one model call and concatenates the
inputs of every thread that is waiting on it, along the batch axis, into one call of the real
model, then hands each thread its own rows back. No timer: a merged call runs as soon as every
thread that takes part is waiting (so a lone request never waits), or when enough rows are
queued for a full batch.

A thread takes part only while it is in the stage that calls the model (`join` on entering it,
`leave` when done): a thread that has moved on to clustering must not hold back the others'
segmentation.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class _Call:
    inputs: tuple[Any, ...]
    rows: int
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class CallMerger:
    """`fn(*inputs) -> rows` over the row-concatenated inputs of all waiting threads.

    `fn` takes tensors or arrays whose first axis is the batch (all inputs of one call share it)
    and returns an array (or tuple of arrays) with one row per input row. `max_rows`: the most
    rows per call of `fn`; more waiting rows run in several calls."""

    def __init__(self, fn: Callable[..., Any], max_rows: int, concat: Callable[[Sequence[Any]], Any]) -> None:
        self._fn = fn
        self.max_rows = max(1, max_rows)
        self._concat = concat
        self._lock = threading.Condition()
        self._members: set[int] = set()  # threads in a stage that calls this merger
        self._queue: list[_Call] = []
        self._running = False
        self.calls = 0  # merged calls of `fn` so far (tests, metrics)

    def join(self) -> None:
        """The calling thread may call this merger from now on, until it leaves."""
        with self._lock:
            self._members.add(threading.get_ident())

    def leave(self) -> None:
        """The calling thread calls this merger no more (for now): the others need not wait for it."""
        with self._lock:
            self._members.discard(threading.get_ident())
            self._lock.notify_all()  # those waiting may now be all that is left: they run

    @contextlib.contextmanager
    def taking_part(self) -> Iterator[None]:
        self.join()
        try:
            yield
        finally:
            self.leave()

    def __call__(self, *inputs: Any) -> Any:
        rows = int(inputs[0].shape[0])
        if threading.get_ident() not in self._members:
            return self._fn(*inputs)  # a caller outside any merged stage (tests, warm-up)
        call = _Call(inputs, rows)
        with self._lock:
            self._queue.append(call)
            self._lock.notify_all()
            while not call.done.is_set():
                if not self._running and self._ready():
                    batch, self._queue, self._running = self._queue, [], True
                    self._lock.release()
                    try:
                        self._run(batch)
                    finally:
                        self._lock.acquire()
                        self._running = False
                        self._lock.notify_all()
                else:
                    self._lock.wait()
        if call.error is not None:
            raise call.error
        return call.result

    def _ready(self) -> bool:
        waiting = sum(c.rows for c in self._queue)
        return bool(self._queue) and (len(self._queue) >= len(self._members) or waiting >= self.max_rows)

    def _run(self, batch: list[_Call]) -> None:
        """One or more calls of `fn` over `batch`, split back to each call's rows."""
        try:
            outputs = []
            for group in _groups(batch, self.max_rows):
                merged = [self._concat([c.inputs[i] for c in group]) for i in range(len(group[0].inputs))]
                outputs.append((group, self._fn(*merged)))
                self.calls += 1
            for group, output in outputs:
                offset = 0
                for call in group:
                    call.result = _rows(output, offset, offset + call.rows)
                    offset += call.rows
        except BaseException as exc:  # noqa: BLE001 - every caller of the batch gets the failure
            for call in batch:
                call.error = exc
        finally:
            for call in batch:
                call.done.set()


def _groups(batch: list[_Call], max_rows: int) -> Iterator[list[_Call]]:
    group: list[_Call] = []
    rows = 0
    for call in batch:
        if group and rows + call.rows > max_rows:
            yield group
            group, rows = [], 0
        group.append(call)
        rows += call.rows
    if group:
        yield group


def _rows(output: Any, start: int, stop: int) -> Any:
    if isinstance(output, tuple):
        return tuple(o[start:stop] for o in output)
    return output[start:stop]


def concat_rows(parts: Sequence[Any]) -> Any:
    """Concatenate tensors or arrays along their first axis."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    import torch

    return torch.cat(list(parts))
