"""DER and speaker counts of the embedded diarizer on composed meetings and the shared recordings,
for the shipped hyper-parameters and a few alternatives, side by side.

    .venv/bin/python bench/meeting_der.py [--only overlapped,dev00] [--variants default,thr0.6]
                                          [--exclude-overlap true|false] [--step 0.1]

Without --step, as shipped: recordings longer than `LongRecordings.above_s` (120 s) are diarized
with its coarser step and clustering (each variant's moved as the default's); --step 0.1 is the 1-s step
for every recording (the shipped rule before long recordings had their own).

Recordings: the compositions of tests/longform.py (noisy_open_en, back_to_back, mixed_zh_en,
overlapped: 3-3.6 min, 5-6 speakers, with overlapped speech kept in their reference), the composed
meeting of tests/composed.py, and the shared pyannote sample and AMI dev excerpts (dev00, dev01,
over their UEM). Scored as bench/diarization_der.py scores them: pyannote.metrics'
DiarizationErrorRate(collar=0.25), overlapped speech included.

Each recording is segmented and embedded once (pyannote's training cache); each variant of the
clustering and min_duration_off parameters, or of the speaker-count hints (the true count given
as num_speakers or min_speakers, one less as max_speakers), then only clusters and reconstructs again. Segmentation
step and the embedding's exclusion of overlap change the embeddings: give them as options (one
run each). Prints a table (DER, speakers found/true, per variant), the means over the
compositions and the short recordings, then one JSON line.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pyannote.core import Annotation, Segment, Timeline  # noqa: E402
from pyannote.metrics.diarization import DiarizationErrorRate  # noqa: E402

from bench.diarization_der import cases as short_cases  # noqa: E402
from bench.diarization_der import load_audio, read_rttm, read_uem, to_annotation  # noqa: E402
from models.diarization_dir import build_default_pipeline_dir  # noqa: E402
from tests.longform import compositions  # noqa: E402
from whisperx_service.diarization.common import SAMPLE_RATE, prepare_audio  # noqa: E402
from whisperx_service.diarization.embedded import DEFAULT_PIPELINE_PARAMS, LongRecordings  # noqa: E402
from whisperx_service.diarization.pyannote_backend import (  # noqa: E402
    load_pyannote_pipeline,
    long_recordings_variant,
    turns_of,
)

log = logging.getLogger("bench.meeting_der")

COMPOSITIONS = ("noisy_open_en", "back_to_back", "mixed_zh_en", "overlapped", "meeting", "long")
# bench/throughput.py's >= 5-min recording: the composed meeting, then these, end to end; their
# speakers are the meeting's (its labels: the source's prefix and the RTTM's name)
LONG_PARTS = (("meeting", ""), ("sample", "pyannote_"), ("dev00", "ami_"), ("dev01", "ami_"))
SHORT = ("sample", "dev00", "dev01")


def _variant(threshold: float | None = None, min_cluster_size: int | None = None,
             min_duration_off: float | None = None) -> dict[str, Any]:
    params = copy.deepcopy(DEFAULT_PIPELINE_PARAMS)
    if threshold is not None:
        params["clustering"]["threshold"] = threshold
    if min_cluster_size is not None:
        params["clustering"]["min_cluster_size"] = min_cluster_size
    if min_duration_off is not None:
        params["segmentation"]["min_duration_off"] = min_duration_off
    return params


VARIANTS: dict[str, dict[str, Any]] = {
    "default": _variant(),
    "thr0.6": _variant(threshold=0.6),
    "thr0.65": _variant(threshold=0.65),
    "thr0.75": _variant(threshold=0.75),
    "thr0.8": _variant(threshold=0.8),
    "mcs3": _variant(min_cluster_size=3),
    "mcs4": _variant(min_cluster_size=4),
    "thr0.65mcs4": _variant(threshold=0.65, min_cluster_size=4),  # LongRecordings' own, under --step 0.2
    "mcs6": _variant(min_cluster_size=6),
    "mcs8": _variant(min_cluster_size=8),
    "mcs12": _variant(min_cluster_size=12),  # the shipped value before overlapped meetings were measured
    "mcs20": _variant(min_cluster_size=20),
    "off0.3": _variant(min_duration_off=0.3),
    # the shipped parameters with the true count as a hint: what num_speakers / min_speakers /
    # max_speakers (the request's hints) make of it
    "num=true": _variant(),
    "min=true": _variant(),
    "max=true-1": _variant(),
}
DEFAULT_VARIANTS = "default,mcs12,thr0.6,thr0.65,thr0.75,thr0.8,mcs6,mcs20,off0.3,num=true,min=true,max=true-1"


def hints(variant: str, true_speakers: int) -> dict[str, int]:
    """The speaker-count hints a variant passes (none but for the hint variants)."""
    if variant == "num=true":
        return {"num_speakers": true_speakers}
    if variant == "min=true":
        return {"min_speakers": true_speakers}
    if variant == "max=true-1":
        return {"max_speakers": true_speakers - 1}
    return {}


@dataclass
class Case:
    name: str
    audio: np.ndarray
    reference: Annotation
    uem: Timeline


def all_cases(work: Path) -> list[Case]:
    out: list[Case] = []
    for comp in compositions().values():
        reference = Annotation(uri=comp.name)
        for i, (s, e, k) in enumerate(comp.turns):
            reference[Segment(s, e), str(i)] = k
        out.append(Case(comp.name, comp.audio, reference, Timeline([Segment(0.0, comp.duration)], uri=comp.name)))
    for case in short_cases(work):
        audio = load_audio(case.wav)
        duration = len(audio) / SAMPLE_RATE
        uem = read_uem(case.uem, case.uri) if case.uem else Timeline([Segment(0.0, duration)], uri=case.uri)
        out.append(Case(case.name, audio, read_rttm(case.rttm, case.uri), uem))
    return out + [long_case({c.name: c for c in out})]


def long_case(cases: dict[str, Case]) -> Case:
    """bench/throughput.py's long recording, its reference and UEM the parts' own, shifted."""
    reference, uem, audio, offset = Annotation(uri="long"), Timeline(uri="long"), [], 0.0
    for name, prefix in LONG_PARTS:
        part = cases[name]
        for i, (segment, _, label) in enumerate(part.reference.itertracks(yield_label=True)):
            reference[Segment(segment.start + offset, segment.end + offset), f"{name}{i}"] = prefix + label
        for segment in part.uem:
            uem.add(Segment(segment.start + offset, segment.end + offset))
        audio.append(part.audio)
        offset += len(part.audio) / SAMPLE_RATE
    return Case("long", np.concatenate(audio), reference, uem)


def score(case: Case, turns: list[Any]) -> tuple[float, int]:
    metric = DiarizationErrorRate(collar=0.25)
    der = float(metric(case.reference, to_annotation(turns, case.reference.uri or case.name), uem=case.uem))
    return der, len({t.speaker for t in turns})


def run(pipeline: Any, cases: list[Case], variants: dict[str, dict[str, Any]],
        long: tuple[LongRecordings, Any] | None = None) -> dict[str, Any]:
    """With `long` (the shipped rule and its pipeline), recordings over its length are diarized by
    that pipeline, each variant's min_cluster_size scaled and threshold moved as the rule moves
    the default's."""
    import torch

    pipeline.training = True  # segmentation and embeddings cached in each file's dict
    if long is not None:
        long[1].training = True
    rows: dict[str, dict[str, Any]] = {}
    for case in cases:
        wave = prepare_audio(case.audio)
        chosen, scale, shift = pipeline, 1.0, 0.0
        if long is not None and len(wave) > long[0].above_s * SAMPLE_RATE:
            chosen = long[1]
            scale = long[0].min_cluster_size / DEFAULT_PIPELINE_PARAMS["clustering"]["min_cluster_size"]
            shift = long[0].threshold - DEFAULT_PIPELINE_PARAMS["clustering"]["threshold"]
        file: dict[str, Any] = {"waveform": torch.from_numpy(wave)[None], "sample_rate": SAMPLE_RATE,
                                "uri": case.reference.uri or case.name}
        duration = len(wave) / SAMPLE_RATE
        row: dict[str, Any] = {"true_speakers": len(case.reference.labels()), "duration": round(duration, 1)}
        for name, params in variants.items():
            params = copy.deepcopy(params)
            clustering = params["clustering"]
            clustering.update(min_cluster_size=round(clustering["min_cluster_size"] * scale),
                              threshold=round(clustering["threshold"] + shift, 4))
            chosen.instantiate(params)
            started = time.perf_counter()
            with torch.inference_mode():
                turns = turns_of(chosen(file, **hints(name, row["true_speakers"])), duration)
            seconds = time.perf_counter() - started
            der, found = score(case, turns)
            row[name] = {"der": round(der, 4), "speakers": found}
            if "rtf" not in row:  # the first variant pays segmentation and embeddings
                row["rtf"] = round(seconds / duration, 4)
            log.info("%s %s: DER %.3f, %d/%d speakers, %.1f s", case.name, name, der, found,
                     row["true_speakers"], seconds)
        rows[case.name] = row
    return rows


def summary(rows: dict[str, dict[str, Any]], variants: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for v in variants:
        comp = [rows[c][v]["der"] for c in COMPOSITIONS if c in rows]
        short = [rows[c][v]["der"] for c in SHORT if c in rows]
        within = [abs(rows[c][v]["speakers"] - rows[c]["true_speakers"]) <= 1 for c in COMPOSITIONS if c in rows]
        out[v] = {"mean_der_compositions": round(float(np.mean(comp)), 4) if comp else None,
                  "mean_der_short": round(float(np.mean(short)), 4) if short else None,
                  "counts_within_1": f"{sum(within)}/{len(within)}"}
    return out


def table(rows: dict[str, dict[str, Any]], variants: list[str], means: dict[str, Any]) -> str:
    width = 13
    header = f"{'recording':<14}{'dur':>6}{'true':>5}" + "".join(f"{v:>{width}}" for v in variants)
    lines = [header, "-" * len(header)]
    for name, row in rows.items():
        cells = "".join(f"{row[v]['der']:>7.3f} ({row[v]['speakers']:>2})" for v in variants)
        lines.append(f"{name:<14}{row['duration']:>6.0f}{row['true_speakers']:>5}{cells}")
    lines.append("-" * len(header))
    for key, label in (("mean_der_compositions", "mean compos."), ("mean_der_short", "mean short")):
        cells = "".join(f"{means[v][key]:>{width}.3f}" if means[v][key] is not None else f"{'':>{width}}"
                        for v in variants)
        lines.append(f"{label:<25}{cells}")
    lines.append(f"{'counts +-1':<25}" + "".join(f"{means[v]['counts_within_1']:>{width}}" for v in variants))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", default="", help="comma-separated recordings (default: all)")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--exclude-overlap", choices=["true", "false"], default=None,
                        help="embedding_exclude_overlap (default: the shipped value)")
    parser.add_argument("--step", type=float, default=None, help="segmentation step, share of the 10-s window")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    import torch

    torch.set_num_threads(args.threads)
    variants = {v: VARIANTS[v] for v in args.variants.split(",")}
    with tempfile.TemporaryDirectory(prefix="meeting-der-") as tmp:
        work = Path(tmp)
        cases = all_cases(work)
        if args.only:
            wanted = set(args.only.split(","))
            cases = [c for c in cases if c.name in wanted]
        model_dir = work / "pipeline"
        build_default_pipeline_dir(model_dir)
        pipeline = load_pyannote_pipeline(model_dir, embedding_threads=args.threads, threads=args.threads)
        if args.exclude_overlap is not None:
            pipeline.embedding_exclude_overlap = args.exclude_overlap == "true"
        long = None
        if args.step is not None:  # that step for every recording
            pipeline.segmentation_step = args.step
            pipeline._segmentation.step = args.step * pipeline._segmentation.duration
        else:  # as shipped: long recordings with LongRecordings' step
            rule = LongRecordings()
            long = (rule, long_recordings_variant(pipeline, rule))
        rows = run(pipeline, cases, variants, long)
    means = summary(rows, list(variants))
    sys.stdout.write(table(rows, list(variants), means) + "\n")
    sys.stdout.write(json.dumps({"exclude_overlap": pipeline.embedding_exclude_overlap,
                                 "step": pipeline.segmentation_step if long is None else "shipped",
                                 "recordings": rows, "means": means}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
