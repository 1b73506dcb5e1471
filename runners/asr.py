"""ASR runner: faster-whisper through whisperx, batched over the VAD chunks of a recording.

whisperx's pipeline runs its shipped pyannote VAD, merges speech into <= 30 s chunks and decodes
them `asr_batch_size` at a time. For languages the alignment runner cannot align, this runner
also times the words with Whisper's own cross-attention (faster-whisper's word timestamps),
on the text it already decoded: no second decoding pass.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import bentoml
import numpy as np
from bentoml.models import BentoModel

from whisperx_service.config import get_settings
from whisperx_service.logs import bind_request_id, configure_logging
from whisperx_service.schema import AsrResult, AsrSegment, Word

with bentoml.importing():
    import whisperx
    from faster_whisper.tokenizer import Tokenizer
    from whisperx.audio import N_SAMPLES, SAMPLE_RATE, log_mel_spectrogram

logger = logging.getLogger("whisperx_service.asr")
settings = get_settings()


@bentoml.service(
    name="asr",
    workers=1,
    resources={"cpu": str(settings.asr_threads)},
    traffic={"timeout": settings.stage_timeout_s},
)
class ASR:
    whisper_model = BentoModel(settings.asr_model)

    def __init__(self) -> None:
        configure_logging()
        started = time.perf_counter()
        self.device = settings.resolved_device()
        self.model_tag = str(self.whisper_model.tag)
        self.pipeline = whisperx.load_model(
            self.whisper_model.path,
            self.device,
            compute_type=settings.resolved_compute_type(),
            asr_options={"beam_size": settings.beam_size},
            vad_method="pyannote",
            vad_options={"vad_onset": settings.vad_onset, "vad_offset": settings.vad_offset},
            threads=settings.asr_threads,
        )
        self.whisper = self.pipeline.model
        # The Whisper "n_mels" the model expects (80, or 128 for large-v3).
        self.n_mels = int(self.whisper.feat_kwargs.get("feature_size") or 80)
        self.english_only = not self.whisper.model.is_multilingual
        logger.info(
            "ASR ready: %s on %s (%s) in %.1f s", self.model_tag, self.device,
            settings.resolved_compute_type(), time.perf_counter() - started,
        )

    def _features(self, chunk: np.ndarray) -> np.ndarray:
        padding = max(0, N_SAMPLES - chunk.shape[0])
        mel = log_mel_spectrogram(chunk[:N_SAMPLES], n_mels=self.n_mels, padding=padding)
        return np.asarray(mel, dtype=np.float32)

    def _detect_language(self, audio: np.ndarray) -> tuple[str, float]:
        if self.english_only:
            return "en", 1.0
        encoder_output = self.whisper.encode(self._features(audio[:N_SAMPLES]))
        token, probability = self.whisper.model.detect_language(encoder_output)[0][0]
        return token[2:-2], float(probability)

    def _tokenizer(self, language: str, task: str) -> Tokenizer:
        return Tokenizer(self.whisper.hf_tokenizer, self.whisper.model.is_multilingual,
                         task=task, language=language)

    def _whisper_words(self, audio: np.ndarray, segment: dict[str, Any], tokenizer: Tokenizer) -> list[Word]:
        """Time the words of one decoded chunk with Whisper's cross-attention (DTW)."""
        start_sample = int(segment["start"] * SAMPLE_RATE)
        chunk = audio[start_sample:int(segment["end"] * SAMPLE_RATE)]
        text = segment["text"]
        tokens = [t for t in tokenizer.encode(text if text.startswith(" ") else " " + text)
                  if t < tokenizer.eot]
        if not tokens or chunk.shape[0] == 0:
            return []
        encoder_output = self.whisper.encode(self._features(chunk))
        subsegment = {"tokens": tokens, "seek": 0, "start": 0.0, "end": chunk.shape[0] / SAMPLE_RATE}
        opts = self.pipeline.options
        self.whisper.add_word_timestamps(
            [[subsegment]], tokenizer, encoder_output,
            num_frames=min(chunk.shape[0], N_SAMPLES) // self.whisper.feature_extractor.hop_length,
            prepend_punctuations=opts.prepend_punctuations,
            append_punctuations=opts.append_punctuations,
            last_speech_timestamp=0.0,
        )
        offset = float(segment["start"])
        limit = float(segment["end"])
        words: list[Word] = []
        for w in subsegment.get("words", []):
            start = min(max(offset + float(w["start"]), offset), limit)
            end = min(max(offset + float(w["end"]), start), limit)
            words.append(Word(word=str(w["word"]).strip(), start=round(start, 3),
                              end=round(end, 3), score=round(float(w["probability"]), 3)))
        return [w for w in words if w.word]

    @bentoml.api
    def transcribe(
        self,
        audio: np.ndarray,
        language: str | None = None,
        task: str = "transcribe",
        aligned_languages: list[str] | None = None,
        request_id: str | None = None,
    ) -> AsrResult:
        """Transcribe 16 kHz mono float32 audio.

        `aligned_languages` are the languages the alignment runner covers; for any other
        language (None: all) the words are timed here with Whisper's own timestamps.
        """
        with bind_request_id(request_id):
            started = time.perf_counter()
            audio = np.ascontiguousarray(audio, dtype=np.float32)
            probability: float | None = None
            if language is None:
                language, probability = self._detect_language(audio)
            result = self.pipeline.transcribe(
                audio, batch_size=settings.asr_batch_size, language=language, task=task
            )
            raw_segments = [s for s in result["segments"] if s["text"].strip()]
            need_words = aligned_languages is None or language not in aligned_languages
            segments: list[AsrSegment] = []
            tokenizer = self._tokenizer(language, task) if need_words and raw_segments else None
            for seg in raw_segments:
                words = self._whisper_words(audio, seg, tokenizer) if tokenizer else None
                segments.append(AsrSegment(
                    start=float(seg["start"]), end=float(seg["end"]), text=seg["text"].strip(),
                    avg_logprob=_optional_float(seg.get("avg_logprob")), words=words,
                ))
            logger.info(
                "transcribed %.1f s of %s audio into %d segments in %.2f s (whisper words: %s)",
                audio.shape[0] / SAMPLE_RATE, language, len(segments),
                time.perf_counter() - started, need_words,
            )
            return AsrResult(segments=segments, language=language,
                             language_probability=probability, model=self.model_tag)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)
