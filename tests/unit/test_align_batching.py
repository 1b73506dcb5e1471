"""Batched wav2vec2 emissions (whisperx_service/alignment.py, the alignment runner's GPU path)
against whisperx.align's own per-segment path (`align_each`, its CPU path), on real recordings
with randomly initialised tiny aligners.

Random weights give near-uniform emissions, whose alignments hardly depend on them; the output
layer is scaled up (x30) so that emissions are peaked and a wrong, shifted or swapped emission
moves words. Both feature-encoder kinds are covered: group norm (wav2vec2-base) and layer norm
(large-xlsr-53).
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import soundfile

from tests.data import AMI_DIR, JFK_FLAC, JFK_REFERENCE
from whisperx_service import alignment
from whisperx_service.alignment import (
    align_batched,
    align_each,
    batch_logits,
    batches_on,
    model_waveform,
    next_batch,
    plan_batches,
)
from whisperx_service.schema import AlignJob, AsrSegment

TOLERANCE_S = 0.02
AMI_TEXT = [  # made-up text of real words: random weights align any text
    (0.8, 4.1, "so we should start with the design"),
    (4.3, 6.0, "yes"),
    (6.2, 13.9, "the remote control needs fewer buttons and a bigger screen for the elderly"),
    (14.0, 16.6, "room 5 at ten"),  # a digit: whisperx's wildcard column
    (16.8, 16.81, "ok"),  # under 400 samples: whisperx pads it to 400
    (17.0, 19.0, ""),  # no text: whisperx leaves it unaligned, no emission is computed
    (19.5, 27.2, "I think the budget is fine but we must ask marketing first"),
    (45.0, 47.0, "past the end"),  # starts after the audio (30 s): whisperx skips it
]
Model = tuple[Any, dict[str, Any]]


@pytest.fixture(scope="module")
def nltk_data(tmp_path_factory: pytest.TempPathFactory) -> None:
    import nltk

    from models.sources import build_punkt_tab

    directory = tmp_path_factory.mktemp("nltk")
    build_punkt_tab(directory)
    nltk.data.path.insert(0, str(directory))


@pytest.fixture(scope="module", params=["group", "layer"])
def aligner(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, nltk_data: None) -> Model:
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


def _jfk_job(audio: np.ndarray, language: str = "en") -> AlignJob:
    first, second = JFK_REFERENCE.read_text().strip().split(", ask not")
    return AlignJob(audio=audio, language=language, request_id="jfk", segments=[
        AsrSegment(start=0.3, end=3.0, text=first + ","), AsrSegment(start=3.2, end=10.6, text="ask not" + second)])


def _ami_job(audio: np.ndarray, language: str = "en") -> AlignJob:
    return AlignJob(audio=audio, language=language, request_id="ami",
                    segments=[AsrSegment(start=s, end=e, text=t) for s, e, t in AMI_TEXT])


class Recorder:
    """`batch_logits` as align_batched calls it, keeping which waveforms went into each batch."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_length: int | None = None,
                 fail_alone: bool = True) -> None:
        self.fail_length, self.fail_alone = fail_length, fail_alone
        self.batches: list[list[np.ndarray]] = []
        self.outputs: list[weakref.ref[Any]] = []
        monkeypatch.setattr(alignment, "batch_logits", self)

    def __call__(self, model: Any, waveforms: Sequence[np.ndarray], device: str) -> list[Any]:
        self.batches.append(list(waveforms))
        if self.fail_length is not None and any(w.shape[0] == self.fail_length for w in waveforms):
            if len(waveforms) > 1:
                raise RuntimeError("CUDA out of memory (the padded batch)")
            if self.fail_alone:
                raise RuntimeError("this segment cannot be computed")
        logits = batch_logits(model, waveforms, device)
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


def test_padded_batch_emissions_equal_each_segment_alone(aligner: Model) -> None:
    model, _ = aligner
    audio = _ami("dev00")
    waveforms = [w for s, e, _ in AMI_TEXT if (w := model_waveform(audio, s, e)) is not None]
    assert len({w.shape[0] for w in waveforms}) > 4  # rows of many lengths: padded
    together = batch_logits(model, waveforms, "cpu")
    for waveform, batched in zip(waveforms, together, strict=True):
        alone = batch_logits(model, [waveform], "cpu")[0]
        assert batched.shape == alone.shape
        assert float((batched - alone).abs().max()) < 1e-3


def test_batched_alignment_equals_per_segment(aligner: Model, jfk: np.ndarray,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder(monkeypatch)
    checked = 0
    for job in (_jfk_job(jfk), _ami_job(_ami("dev00"))):
        (expected,) = align_each([job], lambda _: aligner, "cpu")
        (got,) = align_batched([job], lambda _: aligner, "cpu", max_batch_size=8)
        checked += _assert_same_alignment(got, expected)
    assert checked > 40
    assert max(len(b) for b in recorder.batches) > 1  # batches were padded, not segments alone
    assert any(len({w.shape[0] for w in b}) > 1 for b in recorder.batches)
    assert sum(len(b) for b in recorder.batches) == 2 + len(AMI_TEXT) - 2  # no text, past the end: none


def test_a_batch_mixing_two_recordings_gives_each_its_own_result(
    aligner: Model, jfk: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = [_jfk_job(jfk), _ami_job(_ami("dev01"))]
    alone = align_each(jobs, lambda _: aligner, "cpu")
    recorder = Recorder(monkeypatch)
    # A lax padding bound: segments of both recordings share batches.
    together = align_batched(jobs, lambda _: aligner, "cpu", max_batch_size=16, padding_bound=0.9)
    assert any(all(any(np.shares_memory(w, job.audio) for w in b) for job in jobs) for b in recorder.batches)
    for got, expected in zip(together, alone, strict=True):
        _assert_same_alignment(got, expected)


def test_batches_hold_one_language(aligner: Model, jfk: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    ami = _ami("dev00")
    jobs = [_jfk_job(jfk, "en"), _ami_job(ami, "de"), _ami_job(ami[:16000 * 12], "en")]
    asked: list[str] = []

    def model_for(language: str) -> Model:
        asked.append(language)  # one model per language: both the same weights here
        return aligner

    recorder = Recorder(monkeypatch)
    together = align_batched(jobs, model_for, "cpu", max_batch_size=16, padding_bound=0.9)
    assert asked == ["en", "de"]
    german = [b for b in recorder.batches if any(np.shares_memory(w, ami[16000 * 12:]) for w in b)]
    assert german and all(not any(np.shares_memory(w, jfk) for w in b) for b in german)
    for got, expected in zip(together, align_each(jobs, model_for, "cpu"), strict=True):
        _assert_same_alignment(got, expected)


def test_emissions_are_released_after_each_call(aligner: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder(monkeypatch)
    for _ in range(2):
        align_batched([_ami_job(_ami("dev00"))], lambda _: aligner, "cpu", max_batch_size=4)
    gc.collect()
    assert recorder.outputs and all(ref() is None for ref in recorder.outputs)


def test_a_failing_padded_batch_is_computed_segment_by_segment(
    aligner: Model, jfk: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = [_jfk_job(jfk), _ami_job(_ami("dev00"))]
    expected = align_each(jobs, lambda _: aligner, "cpu")
    first = model_waveform(jfk, 0.3, 3.0)
    assert first is not None
    # Only padded batches holding that segment fail (as one out of memory would): all align.
    recorder = Recorder(monkeypatch, fail_length=first.shape[0], fail_alone=False)
    got = align_batched(jobs, lambda _: aligner, "cpu", max_batch_size=16, padding_bound=0.9)
    assert any(len(b) > 1 and any(w.shape[0] == first.shape[0] for w in b) for b in recorder.batches)
    for a, b in zip(got, expected, strict=True):
        _assert_same_alignment(a, b)


def test_a_segment_failing_alone_fails_the_call(aligner: Model, jfk: np.ndarray,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    first = model_waveform(jfk, 0.3, 3.0)
    assert first is not None
    recorder = Recorder(monkeypatch, fail_length=first.shape[0])
    with pytest.raises(RuntimeError, match="cannot be computed"):
        align_batched([_jfk_job(jfk)], lambda _: aligner, "cpu", max_batch_size=1)
    assert [len(b) for b in recorder.batches] == [1]  # the first segment: nothing computed after it


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


def test_batches_follow_the_device() -> None:
    assert batches_on("cuda") and batches_on("cuda:1")
    assert not batches_on("cpu")


def test_the_sentence_splitter_is_loaded_once_and_splits_as_before(
        aligner: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    import whisperx
    import whisperx.alignment as whisperx_alignment
    from nltk.data import load

    loads: list[str] = []

    def counting_load(resource: str, *args: Any, **kwargs: Any) -> Any:
        loads.append(resource)
        return load(resource, *args, **kwargs)

    monkeypatch.setattr(whisperx_alignment, "nltk_load", counting_load)
    model, metadata = aligner
    audio = _ami("dev00")
    transcript = [{"start": s, "end": e, "text": t} for s, e, t in AMI_TEXT[:4]]
    transcript[2]["text"] = "The remote needs fewer buttons. And a bigger screen, Dr. Smith said."
    plain = whisperx.align(transcript, model, metadata, audio, "cpu", return_char_alignments=False)
    assert len(loads) == len(transcript)  # whisperx alone: once per segment
    job = AlignJob(audio=audio, language="en", request_id="ami",
                   segments=[AsrSegment(**segment) for segment in transcript])
    loads.clear()
    for _ in range(2):
        (ours,) = align_each([job], lambda _: aligner, "cpu")
        assert ours == plain["segments"]
    assert loads == ["tokenizers/punkt_tab/english.pickle"]
    assert len(ours) == len(transcript) + 1  # the sentence split held: two sentences in one segment
