"""Concurrent diarizations share their model calls (`CallMerger`) and still get their own results."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bentoml
import numpy as np
import pytest

from tests.data import AMI_DIR, PYANNOTE_SAMPLE
from whisperx_service import model_store
from whisperx_service.audio import decode_audio
from whisperx_service.diarization import load_backend
from whisperx_service.diarization.merging import CallMerger, concat_rows
from whisperx_service.diarization.pyannote_backend import PyannoteBackend

DEADLINE_S = 30.0


class Recorder:
    """A model stand-in: each row doubled; remembers the rows of every call."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[int] = []
        self.fail_on = fail_on

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        self.batches.append(rows.shape[0])
        if self.fail_on is not None and self.fail_on in rows:
            raise RuntimeError("model failed")
        return rows * 2


def _in_threads(merger: CallMerger, inputs: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """Each thread joins, waits for all to have joined, then makes its calls in order."""
    joined = threading.Barrier(len(inputs))

    def run(calls: list[np.ndarray]) -> list[np.ndarray]:
        with merger.taking_part():
            joined.wait(DEADLINE_S)
            return [merger(rows) for rows in calls]

    with ThreadPoolExecutor(len(inputs)) as pool:
        return list(pool.map(run, inputs))


def test_calls_of_all_waiting_threads_run_as_one_and_each_gets_its_rows() -> None:
    model = Recorder()
    merger = CallMerger(model, max_rows=100, concat=concat_rows)
    inputs = [[np.full((n, 3), 10 * t + k, dtype=np.float32) for k, n in enumerate(sizes)]
              for t, sizes in enumerate([(2, 5), (1, 1), (4, 3)])]
    results = _in_threads(merger, inputs)
    for calls, got in zip(inputs, results, strict=True):
        for rows, out in zip(calls, got, strict=True):
            np.testing.assert_array_equal(out, rows * 2)
    assert sum(model.batches) == 16
    assert len(model.batches) < 6  # six calls, fewer model calls
    assert model.batches[0] == 7  # the first call of each thread, merged


def test_merged_calls_respect_max_rows() -> None:
    model = Recorder()
    merger = CallMerger(model, max_rows=4, concat=concat_rows)
    inputs = [[np.full((3, 2), t, dtype=np.float32)] for t in range(4)]
    results = _in_threads(merger, inputs)
    assert all(np.array_equal(got[0], rows[0] * 2) for rows, got in zip(inputs, results, strict=True))
    assert max(model.batches) <= 4 and sum(model.batches) == 12


def test_a_failed_model_call_fails_every_call_in_it() -> None:
    model = Recorder(fail_on=7)
    merger = CallMerger(model, max_rows=100, concat=concat_rows)
    joined = threading.Barrier(2)

    def run(value: float) -> str:
        with merger.taking_part():
            joined.wait(DEADLINE_S)
            try:
                merger(np.full((1, 1), value, dtype=np.float32))
            except RuntimeError as exc:
                return str(exc)
            return "ok"

    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(run, [7.0, 1.0])) == ["model failed", "model failed"]


def test_a_caller_waits_for_members_only_until_they_leave() -> None:
    """A thread that joined but has not called yet holds the batch back; leaving releases it."""
    model = Recorder()
    merger = CallMerger(model, max_rows=100, concat=concat_rows)
    merger.join()  # this thread: a member that makes no call
    done = threading.Event()

    def call() -> None:
        with merger.taking_part():
            merger(np.ones((2, 2), dtype=np.float32))
        done.set()

    worker = threading.Thread(target=call)
    worker.start()
    assert not done.wait(0.5)  # waiting for this thread's rows
    merger.leave()
    assert done.wait(DEADLINE_S)
    worker.join(DEADLINE_S)
    assert model.batches == [2]


@pytest.fixture(scope="module")
def backend() -> PyannoteBackend:
    model_dir = Path(bentoml.models.get(f"{model_store.DIARIZATION_DEFAULT}:latest").path)
    loaded = load_backend("pyannote", model_dir=model_dir, device="cpu", threads=2, embedding_threads=2)
    assert isinstance(loaded, PyannoteBackend)
    return loaded


def test_two_recordings_diarized_at_once_each_get_their_own_turns(backend: PyannoteBackend) -> None:
    """Two different recordings in the same merged batches: each gets exactly the turns it gets
    alone (no cross-talk), and the model ran fewer times than for the two one after the other."""
    import asyncio

    clips = [asyncio.run(decode_audio(path, max_seconds=60)) for path in (PYANNOTE_SAMPLE, AMI_DIR / "dev00.wav")]
    calls_before = backend.segment.calls + backend.embed.calls
    alone = [backend.diarize(clip) for clip in clips]
    calls_alone = backend.segment.calls + backend.embed.calls - calls_before
    started = threading.Barrier(2)

    def diarize(clip: np.ndarray) -> object:
        started.wait(DEADLINE_S)
        return backend.diarize(clip)

    calls_before = backend.segment.calls + backend.embed.calls
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(diarize, clips))
    calls_together = backend.segment.calls + backend.embed.calls - calls_before
    assert together == alone
    assert len({t.speaker for t in alone[0]}) == 2 and alone[0] != alone[1]
    assert calls_together < calls_alone


def test_long_recordings_take_the_coarser_step_and_short_ones_keep_theirs(backend: PyannoteBackend) -> None:
    """A recording over `LongRecordings.above_s` is diarized by the second pipeline (same models,
    twice the step); a long and a short one diarized at once each get the turns they get alone."""
    import asyncio

    assert backend.long is not None and backend.long_pipeline is not None
    short, long = backend.pipeline, backend.long_pipeline
    assert long._segmentation.model is short._segmentation.model  # no second copy of the weights
    assert long._segmentation.step == pytest.approx(2 * short._segmentation.step)
    assert long.clustering.min_cluster_size < short.clustering.min_cluster_size
    above = int(backend.long.above_s * 16000)
    assert backend.pipeline_for(above) is short and backend.pipeline_for(above + 1) is long

    sample = asyncio.run(decode_audio(PYANNOTE_SAMPLE, max_seconds=60))
    dev01 = asyncio.run(decode_audio(AMI_DIR / "dev01.wav", max_seconds=60))
    meeting = np.concatenate([sample, dev01] * (1 + above // (sample.shape[0] + dev01.shape[0])))
    assert backend.pipeline_for(meeting.shape[0]) is long
    alone = [backend.diarize(clip) for clip in (meeting, sample)]
    started = threading.Barrier(2)

    def diarize(clip: np.ndarray) -> object:
        started.wait(DEADLINE_S)
        return backend.diarize(clip)

    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(diarize, (meeting, sample)))
    assert together == alone
    assert len({t.speaker for t in alone[0]}) >= 3  # the sample's two voices and dev01's
