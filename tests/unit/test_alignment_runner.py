"""The wav2vec2 alignment path, exercised with a randomly initialised tiny model (see
tests/unit/random_aligner.py): structure is checked, accuracy cannot be with random weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
