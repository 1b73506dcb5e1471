"""The wav2vec2 alignment path, exercised with a randomly initialised tiny model (see
tests/unit/random_aligner.py): structure is checked, accuracy cannot be with random weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.data import JFK_REFERENCE, PROJECT


def test_align_runner_times_every_word_in_order(tmp_path: Path) -> None:
    out = tmp_path / "aligned.json"
    env = dict(os.environ, BENTOML_HOME=str(tmp_path / "bentoml"), BENTOML_DO_NOT_TRACK="true")
    proc = subprocess.run(
        [sys.executable, "-m", "tests.unit.random_aligner", str(out)],
        cwd=PROJECT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["languages"] == ["en"]
    assert result["model"].startswith("alignment-en:")
    segments = result["segments"]
    # NLTK punkt splits the reference into its two sentences... or keeps one: both are sentences.
    assert 1 <= len(segments) <= 2
    words = [w for s in segments for w in s["words"]]
    expected = JFK_REFERENCE.read_text().split()
    assert [w["word"] for w in words] == expected
    previous = 0.3
    for segment in segments:
        for w in segment["words"]:
            assert w["start"] is not None and w["end"] is not None
            assert 0.3 - 1e-3 <= w["start"] <= w["end"] <= 10.6 + 1e-3
            assert w["start"] >= previous - 1e-3
            previous = w["start"]
            assert 0.0 <= w["score"] <= 1.0


def _aligned_words(segments: list[dict[str, Any]]) -> list[tuple[str, float, float]]:
    return [(w["word"], w["start"], w["end"]) for s in segments for w in s["words"]]


def test_two_chunks_in_one_batch_equal_each_alone(tmp_path: Path) -> None:
    """The batchable `align` as BentoML calls it with two requests' chunks in one list: each
    gets what it gets alone, per chunk (the CPU's way) and with padded emissions (the GPU's)."""
    out = tmp_path / "aligned.json"
    env = dict(os.environ, BENTOML_HOME=str(tmp_path / "bentoml"), BENTOML_DO_NOT_TRACK="true",
               WXS_ALIGN_BATCH_SIZE="8")
    code = "import sys; from pathlib import Path; from tests.unit.random_aligner import align_two_jobs; " \
           "align_two_jobs(Path(sys.argv[1]))"
    proc = subprocess.run([sys.executable, "-c", code, str(out)], cwd=PROJECT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and not result["batched_by_default"]  # CPU: each chunk on its own
    for way in ("per_chunk", "batched"):
        together, alone = result[way]["together"], result[way]["alone"]
        assert len(together) == 2 and result[way]["models"][0].startswith("alignment-en:")
        for got, expected in zip(together, alone, strict=True):
            assert [s["text"] for s in got] == [s["text"] for s in expected]
            for a, b in zip(_aligned_words(got), _aligned_words(expected), strict=True):
                assert a[0] == b[0] and abs(a[1] - b[1]) <= 0.02 and abs(a[2] - b[2]) <= 0.02, (a, b)
        assert [w[0] for w in _aligned_words(together[0])] == JFK_REFERENCE.read_text().split()
        assert [w[0] for w in _aligned_words(together[1])][:3] == ["so", "we", "should"]
    # The two ways differ only in how emissions are computed: the same words, the same times.
    for batched, per_chunk in zip(result["batched"]["together"], result["per_chunk"]["together"], strict=True):
        for a, b in zip(_aligned_words(batched), _aligned_words(per_chunk), strict=True):
            assert a[0] == b[0] and abs(a[1] - b[1]) <= 0.02 and abs(a[2] - b[2]) <= 0.02, (a, b)
