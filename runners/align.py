"""Alignment runner: wav2vec2 forced alignment (whisperx.align), one model per language.

`align` is a batchable BentoML API: the pipeline sends each decoded chunk as its own call, and
BentoML's adaptive batching merges the chunks of all in-flight requests into one list (at most
`WXS_ALIGN_BATCH_SIZE`). On a GPU their wav2vec2 emissions are computed in padded batches; on a
CPU each chunk is aligned on its own (whisperx_service/alignment.py).

Models come from the BentoML model store (role=alignment, one per language, imported with
``python -m models import-alignment``); each is declared at class scope so that ``bentoml build``
packages it, and loaded on first use. Sentence splitting uses the NLTK punkt_tab data stored
as the ``nltk-punkt-tab`` model.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import bentoml
import numpy as np
from bentoml.models import BentoModel

from whisperx_service import model_store
from whisperx_service.alignment import align_batched, align_each, batches_on
from whisperx_service.config import get_settings, runner_service_config
from whisperx_service.connections import bound_connections
from whisperx_service.lifecycle import outlive_gateway
from whisperx_service.logs import bind_request_id, configure_logging
from whisperx_service.schema import AlignJob, AlignResult, Segment, Word

# nltk, torch and whisperx are imported where they are used: every process of the graph imports
# this module, and only the alignment runner should pay for them.

logger = logging.getLogger("whisperx_service.align")
# Read at import only for what BentoML needs then (resources); each instance reads the settings
# again when it starts.
_declared = get_settings()

_MODEL_ATTR = "alignment_model_"
# Chunks per call from all in-flight requests (BentoML's adaptive batching), read at import like
# every decorator argument.
_ALIGN_BATCH = _declared.resolved_align_batch_size()


def _declare_alignment_models(cls: type) -> type:
    """Declare every stored alignment model at class scope, so the bento carries all of them."""
    for language, tag in sorted(model_store.alignment_languages().items()):
        setattr(cls, _MODEL_ATTR + language.replace("-", "_"), BentoModel(tag))
    return cls


@bentoml.service(name="align", **runner_service_config(_declared.align_threads))
@_declare_alignment_models
class Aligner:
    nltk_data = BentoModel(model_store.NLTK_MODEL)

    def __init__(self) -> None:
        configure_logging()
        settings = get_settings()
        outlive_gateway(settings.shutdown_grace_s)  # SIGTERM: serve until the gateway has drained
        self.device = "cpu"
        self._loaded: dict[str, tuple[Any, dict[str, Any], str]] = {}
        self._lock = threading.Lock()
        self.batch_size = settings.resolved_align_batch_size()
        self.batched = False  # padded emission batches: set on CUDA below (tests set it on a CPU)
        if self.supported():
            # torch and nltk only when there is something to align: without an alignment model
            # (the embedded defaults) this process stays at ~100 MiB instead of ~700.
            import nltk
            import torch

            nltk.data.path.insert(0, self.nltk_data.path)
            torch.set_num_threads(settings.align_threads)
            self.device = settings.resolved_device()
            self.batched = batches_on(self.device)
        logger.info("alignment ready for languages: %s (%s)", ", ".join(self.supported()) or "none",
                    f"emissions in padded batches of up to {self.batch_size}" if self.batched
                    else "each chunk on its own")

    def supported(self) -> list[str]:
        prefix = _MODEL_ATTR
        return sorted(
            name[len(prefix):].replace("_", "-") for name in dir(type(self)) if name.startswith(prefix)
        )

    def _model_for(self, language: str) -> tuple[Any, dict[str, Any], str]:
        with self._lock:
            if language not in self._loaded:
                import whisperx

                stored = getattr(self, _MODEL_ATTR + language.replace("-", "_"))
                started = time.perf_counter()
                model, metadata = whisperx.load_align_model(
                    language_code=language, device=self.device, model_name=stored.path
                )
                self._loaded[language] = (model, metadata, str(stored.tag))
                logger.info("loaded %s in %.1f s", stored.tag, time.perf_counter() - started)
            return self._loaded[language]

    @bentoml.api
    def languages(self) -> list[str]:
        """Languages this runner can align."""
        return self.supported()

    # BentoML's batching takes at least 2 per batch; a batch size of 1 (a CPU's default) leaves
    # `align` a plain API, each call aligned as it comes, one at a time.
    @bentoml.api(batchable=_ALIGN_BATCH > 1, batch_dim=(0, 0), max_batch_size=max(2, _ALIGN_BATCH),
                 max_latency_ms=int(_declared.stage_timeout_s * 1000))
    def align(self, jobs: list[AlignJob]) -> list[AlignResult]:
        """Align chunks (from any number of requests); results keep their order.

        BentoML 1.4 has no per-item errors: whatever this raises fails every call of the batch
        (its dispatcher sets the one exception on each). So the pipeline sends only languages
        from `languages`, and a failing padded batch is retried segment by segment first."""
        unknown = [job.language for job in jobs if job.language not in self.supported()]
        if unknown:
            raise bentoml.exceptions.InvalidArgument(f"no alignment model for {unknown[0]!r}")
        started = time.perf_counter()

        def model_for(language: str) -> tuple[Any, dict[str, Any]]:
            model, metadata, _ = self._model_for(language)
            return model, metadata

        try:
            if self.batched:
                aligned = align_batched(jobs, model_for, self.device, self.batch_size)
            else:
                aligned = align_each(jobs, model_for, self.device)
        except Exception:
            # Its batch-mates fail with it: name every request that does.
            logger.error("alignment of %d chunks failed (requests %s)", len(jobs),
                         ", ".join(sorted({job.request_id or "-" for job in jobs})))
            raise
        elapsed = time.perf_counter() - started
        results = []
        for job, segments in zip(jobs, aligned, strict=True):
            results.append(AlignResult(segments=[_segment(s) for s in segments],
                                       model=self._model_for(job.language)[2]))
            with bind_request_id(job.request_id):
                logger.info("aligned %d segments (%s) in %.2f s, in a batch of %d chunks (%s)",
                            len(results[-1].segments), job.language, elapsed, len(jobs),
                            "padded emissions" if self.batched else "each on its own")
        return results


def _maybe_float(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if np.isnan(number) else round(number, 3)


def _segment(raw: dict[str, Any]) -> Segment:
    return Segment(
        start=float(raw["start"]),
        end=float(raw["end"]),
        text=str(raw["text"]).strip(),
        words=[
            Word(word=str(w["word"]), start=_maybe_float(w.get("start")),
                 end=_maybe_float(w.get("end")), score=_maybe_float(w.get("score")))
            for w in raw.get("words", [])
        ],
    )


# Bounded keep-alive connections: added replicas of this runner get their share of calls.
bound_connections(Aligner)
