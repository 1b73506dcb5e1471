"""Alignment runner: wav2vec2 forced alignment (whisperx.align), one model per language.

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
from whisperx_service.audio import pcm_to_float
from whisperx_service.config import get_settings, runner_service_config
from whisperx_service.lifecycle import outlive_gateway
from whisperx_service.logs import bind_request_id, configure_logging
from whisperx_service.schema import AlignResult, AsrSegment, Segment, Word

# nltk, torch and whisperx are imported where they are used: every process of the graph imports
# this module, and only the alignment runner should pay for them.

logger = logging.getLogger("whisperx_service.align")
# Read at import only for what BentoML needs then (resources); each instance reads the settings
# again when it starts.
_declared = get_settings()

_MODEL_ATTR = "alignment_model_"


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
        if self.supported():
            # torch and nltk only when there is something to align: without an alignment model
            # (the embedded defaults) this process stays at ~100 MiB instead of ~700.
            import nltk
            import torch

            nltk.data.path.insert(0, self.nltk_data.path)
            torch.set_num_threads(settings.align_threads)
            self.device = settings.resolved_device()
        logger.info("alignment ready for languages: %s", ", ".join(self.supported()) or "none")

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

    @bentoml.api
    def align(
        self,
        audio: np.ndarray,
        segments: list[AsrSegment],
        language: str,
        request_id: str | None = None,
    ) -> AlignResult:
        with bind_request_id(request_id):
            if language not in self.supported():
                raise bentoml.exceptions.InvalidArgument(f"no alignment model for {language!r}")
            model, metadata, tag = self._model_for(language)
            started = time.perf_counter()
            transcript = [{"start": s.start, "end": s.end, "text": s.text} for s in segments]
            import torch
            import whisperx

            with torch.inference_mode():
                aligned = whisperx.align(
                    transcript, model, metadata, pcm_to_float(audio),
                    self.device, return_char_alignments=False,
                )
            result = [_segment(s) for s in aligned["segments"]]
            logger.info("aligned %d segments (%s) in %.2f s", len(result), language,
                        time.perf_counter() - started)
            return AlignResult(segments=result, model=tag)


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
