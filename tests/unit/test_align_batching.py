"""Batched wav2vec2 emissions (whisperx_service/alignment.py) against whisperx.align's own
per-segment path, on real recordings with randomly initialised tiny aligners.

Random weights give near-uniform emissions, whose alignments hardly depend on them; the output
layer is scaled up (x30) so that emissions are peaked and a wrong, shifted or swapped emission
moves words. Both feature-encoder kinds are covered: group norm (wav2vec2-base) and layer norm
(large-xlsr-53).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import threading
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from tests.data import AMI_DIR, JFK_FLAC, JFK_REFERENCE, PROJECT
from whisperx_service.alignment import (
    EmissionBatcher,
    align_batched,
    batch_logits,
    batching_enabled,
    model_waveform,
    next_batch,
    plan_batches,
)

TOLERANCE_S = 0.02
AMI_TEXT = [  # made-up text of real words: random weights align any text
    (0.8, 4.1, "so we should start with the design"),
    (4.3, 6.0, "yes"),
    (6.2, 13.9, "the remote control needs fewer buttons and a bigger screen for the elderly"),
    (14.0, 16.6, "room 5 at ten"),  # a digit: whisperx's wildcard column
    (16.8, 16.81, "ok"),  # under 400 samples: whisperx pads it to 400
    (17.0, 19.0, ""),  # no text: whisperx leaves it unaligned, no emission is sent
    (19.5, 27.2, "I think the budget is fine but we must ask marketing first"),
    (45.0, 47.0, "past the end"),  # starts after the audio: whisperx skips it
]


@pytest.fixture(scope="module")
def nltk_data(tmp_path_factory: pytest.TempPathFactory) -> None:
    import nltk

    from models.sources import build_punkt_tab

    directory = tmp_path_factory.mktemp("nltk")
    build_punkt_tab(directory)
    nltk.data.path.insert(0, str(directory))


@pytest.fixture(scope="module", params=["group", "layer"])
def aligner(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            nltk_data: None) -> tuple[Any, dict[str, Any]]:
    import torch
    import whisperx

    from tests.unit.random_aligner import build_random_wav2vec2, build_random_wav2vec2_layer_norm

    dest = tmp_path_factory.mktemp(f"w2v-{request.param}")
    (build_random_wav2vec2 if request.param == "group" else build_random_wav2vec2_layer_norm)(dest)
    model, metadata = whisperx.load_align_model("en", "cpu", model_name=str(dest))
    assert model.config.feat_extract_norm == request.param
    with torch.no_grad():
        model.lm_head.weight *= 30
        model.lm_head.bias *= 30
    return model, metadata


@pytest.fixture(scope="module")
def jfk() -> np.ndarray:
    from whisperx_service.audio import decode_audio

    return asyncio.run(decode_audio(JFK_FLAC, max_seconds=60))


def _ami(name: str) -> np.ndarray:
    audio, rate = soundfile.read(AMI_DIR / f"{name}.wav", dtype="float32")
    assert rate == 16000
    return np.asarray(audio)


def _jfk_segments() -> list[dict[str, Any]]:
    first, second = JFK_REFERENCE.read_text().strip().split(", ask not")
    return [{"start": 0.3, "end": 3.0, "text": first + ","}, {"start": 3.2, "end": 10.6, "text": "ask not" + second}]


def _ami_segments() -> list[dict[str, Any]]:
    return [{"start": s, "end": e, "text": t} for s, e, t in AMI_TEXT]


def _per_segment(model: Any, metadata: dict[str, Any], audio: np.ndarray,
                 segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    import torch
    import whisperx

    with torch.inference_mode():
        return list(whisperx.align(segments, model, metadata, audio, "cpu")["segments"])


class Recorder:
    """The batcher's compute, keeping which waveforms went into each batch."""

    def __init__(self, model: Any, fail_length: int | None = None) -> None:
        self.model, self.fail_length = model, fail_length
        self.batches: list[list[np.ndarray]] = []
        self.outputs: list[weakref.ref[Any]] = []

    def __call__(self, _key: str, waveforms: list[np.ndarray]) -> list[Any]:
        self.batches.append(list(waveforms))
        if self.fail_length is not None and any(w.shape[0] == self.fail_length for w in waveforms):
            raise RuntimeError("this segment cannot be computed")
        logits = batch_logits(self.model, waveforms, "cpu")
        self.outputs += [weakref.ref(t) for t in logits]
        return logits


def _assert_same_alignment(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> int:
    assert [s["text"] for s in got] == [s["text"] for s in expected]
    got_words = [w for s in got for w in s["words"]]
    expected_words = [w for s in expected for w in s["words"]]
    assert [w["word"] for w in got_words] == [w["word"] for w in expected_words]
    for a, b in zip(got_words, expected_words, strict=True):
        assert a.keys() == b.keys()
        for key in ("start", "end"):
            if key in b:
                assert abs(a[key] - b[key]) <= TOLERANCE_S, (a, b)
    for a, b in zip(got, expected, strict=True):
        assert abs(a["start"] - b["start"]) <= TOLERANCE_S and abs(a["end"] - b["end"]) <= TOLERANCE_S
    return len(got_words)


def test_padded_batch_emissions_equal_each_segment_alone(aligner: tuple[Any, dict[str, Any]]) -> None:
    model, _ = aligner
    audio = _ami("dev00")
    waveforms = [w for s in _ami_segments() if (w := model_waveform(audio, s["start"], s["end"])) is not None]
    assert len({w.shape[0] for w in waveforms}) > 4  # rows of many lengths: padded
    together = batch_logits(model, waveforms, "cpu")
    for waveform, batched in zip(waveforms, together, strict=True):
        alone = batch_logits(model, [waveform], "cpu")[0]
        assert batched.shape == alone.shape
        assert float((batched - alone).abs().max()) < 1e-3


def test_batched_alignment_equals_per_segment(aligner: tuple[Any, dict[str, Any]], jfk: np.ndarray) -> None:
    model, metadata = aligner
    recorder = Recorder(model)
    batcher = EmissionBatcher(recorder, max_batch_size=8)
    checked = 0
    for audio, segments in ((jfk, _jfk_segments()), (_ami("dev00"), _ami_segments())):
        expected = _per_segment(model, metadata, audio, segments)
        got = align_batched(batcher, "en", model, metadata, audio, segments, "cpu")
        checked += _assert_same_alignment(got, expected)
    assert checked > 40
    assert max(len(b) for b in recorder.batches) > 1  # batches were padded, not segments alone
    assert any(len({w.shape[0] for w in b}) > 1 for b in recorder.batches)
    assert sum(len(b) for b in recorder.batches) == 2 + len(AMI_TEXT) - 2  # no text, past the end: none


def test_a_batch_mixing_two_requests_gives_each_its_own_result(
    aligner: tuple[Any, dict[str, Any]], jfk: np.ndarray
) -> None:
    model, metadata = aligner
    requests = [(jfk, _jfk_segments()), (_ami("dev01"), _ami_segments())]
    alone = [_per_segment(model, metadata, audio, segments) for audio, segments in requests]
    recorder = Recorder(model)
    # A long gather window: both requests' segments are waiting before the first batch runs.
    batcher = EmissionBatcher(recorder, max_batch_size=16, gather_s=1.0, padding_bound=0.9)
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(lambda r: align_batched(batcher, "en", model, metadata, r[0], r[1], "cpu"),
                                 requests))
    mixed = [b for b in recorder.batches
             if all(any(np.shares_memory(w, audio) for w in b) for audio, _ in requests)]
    assert mixed, "no batch held segments of both requests"
    for got, expected in zip(together, alone, strict=True):
        _assert_same_alignment(got, expected)


def test_emissions_are_released_after_each_request(aligner: tuple[Any, dict[str, Any]]) -> None:
    model, metadata = aligner
    audio = _ami("dev00")
    recorder = Recorder(model)
    batcher = EmissionBatcher(recorder, max_batch_size=4)
    for _ in range(5):
        align_batched(batcher, "en", model, metadata, audio, _ami_segments(), "cpu")
    gc.collect()
    assert recorder.outputs and all(ref() is None for ref in recorder.outputs)
    assert not batcher._pending
    recorder.batches.clear()


def test_a_failing_segment_fails_only_its_own_request(aligner: tuple[Any, dict[str, Any]], jfk: np.ndarray) -> None:
    model, metadata = aligner
    bad: dict[str, Any] = {"start": 1.0, "end": 2.0, "text": "broken"}
    bad_length = model_waveform(jfk, bad["start"], bad["end"])
    assert bad_length is not None
    recorder = Recorder(model, fail_length=bad_length.shape[0])
    batcher = EmissionBatcher(recorder, max_batch_size=16, gather_s=1.0, padding_bound=0.9)
    ami = _ami("dev00")
    segments = _ami_segments()

    def failing() -> None:
        with pytest.raises(RuntimeError, match="cannot be computed"):
            align_batched(batcher, "en", model, metadata, jfk, [bad, *_jfk_segments()], "cpu")

    with ThreadPoolExecutor(2) as pool:
        fails = pool.submit(failing)
        fine = pool.submit(align_batched, batcher, "en", model, metadata, ami, segments, "cpu")
        fails.result()
        _assert_same_alignment(fine.result(), _per_segment(model, metadata, ami, segments))


def test_batches_bound_their_padding_and_keep_every_segment() -> None:
    rng = np.random.default_rng(0)
    lengths = [int(x) for x in rng.integers(400, 30 * 16000, size=200)]
    for size in (1, 4, 16):
        batches = plan_batches(lengths, size, padding_bound=0.2)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        for batch in batches:
            assert len(batch) <= size
            longest = max(lengths[i] for i in batch)
            assert longest * len(batch) - sum(lengths[i] for i in batch) <= 0.2 * longest * len(batch)
    assert plan_batches(lengths, 16)[0][0] == 0  # the earliest segment goes first
    assert max(len(b) for b in plan_batches([30 * 16000] * 20, 16)) == 8  # MAX_BATCH_SAMPLES: 240 s
    assert sorted(next_batch([100, 100, 100, 1000], 0, 16)) == [0, 1, 2]


def test_batching_follows_the_device() -> None:
    assert batching_enabled("auto", "cuda") and batching_enabled("auto", "cuda:1")
    assert not batching_enabled("auto", "cpu")
    assert batching_enabled("on", "cpu") and not batching_enabled("off", "cuda")


def test_the_batcher_thread_starts_on_first_use() -> None:
    before = {t.name for t in threading.enumerate()}
    EmissionBatcher(lambda _key, _w: [], max_batch_size=4)
    assert {t.name for t in threading.enumerate()} == before


@pytest.fixture()
def runner_result(tmp_path: Path) -> Iterator[dict[str, Any]]:
    out = tmp_path / "aligned.json"
    env = dict(os.environ, BENTOML_HOME=str(tmp_path / "bentoml"), BENTOML_DO_NOT_TRACK="true",
               WXS_ALIGN_BATCH="on", WXS_ALIGN_BATCH_SIZE="8")
    code = "import sys; from pathlib import Path; from tests.unit.random_aligner import align_concurrently; " \
           "align_concurrently(Path(sys.argv[1]))"
    proc = subprocess.run([sys.executable, "-c", code, str(out)], cwd=PROJECT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    yield json.loads(out.read_text())


def test_the_runner_batches_concurrent_requests(runner_result: dict[str, Any]) -> None:
    assert runner_result["batched"]
    together, alone = runner_result["together"], runner_result["alone"]
    for name in alone:
        _assert_same_alignment(together[name], alone[name])
    words = [w["word"] for s in together["jfk"] for w in s["words"]]
    assert words == JFK_REFERENCE.read_text().split()
    assert [w["word"] for s in together["ami"] for w in s["words"]][:3] == ["so", "we", "should"]
    for segments in together.values():
        for segment in segments:
            for w in segment["words"]:
                assert w["start"] is not None and segment["start"] - 1e-3 <= w["start"] <= w["end"] <= segment["end"] + 1e-3
