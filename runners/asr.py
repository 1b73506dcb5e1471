"""ASR runner: faster-whisper through whisperx, in two steps so chunks batch across requests.

`plan` runs whisperx's shipped pyannote VAD and merges speech into <= 30 s chunks (whisperx's
own `merge_chunks`). `decode` is a batchable BentoML API: the gateway sends every chunk as its
own call, and BentoML's adaptive batching merges the chunks of all in-flight requests into
Whisper batches (grouped by language and task, never mixed up). A chunk sent without a language
has it detected on its own encoder output, so detection costs no encoder pass of its own. For
languages the alignment runner cannot align, `decode` also times the words with Whisper's own
cross-attention (faster-whisper's word timestamps), reusing the encoder output of the decode.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import bentoml
import numpy as np
from bentoml.models import BentoModel

from whisperx_service.audio import SAMPLE_RATE, pcm_to_float
from whisperx_service.config import get_settings, runner_service_config
from whisperx_service.lifecycle import outlive_gateway
from whisperx_service.logs import bind_request_id, configure_logging
from whisperx_service.schema import (
    AsrPlan,
    ChunkJob,
    ChunkText,
    LanguageDetection,
    LanguageProbability,
    TimeSpan,
    Word,
    WordTimestampMethod,
    word_timing_method,
)

if TYPE_CHECKING:
    from faster_whisper.tokenizer import Tokenizer

# whisperx, faster-whisper and ctranslate2 are imported where they are used, not here: every
# process of the graph (the arbiter, the gateway, each runner) imports this module, and only the
# ASR runner should pay their ~0.9 GiB.
WINDOW_SAMPLES = 30 * SAMPLE_RATE  # Whisper's input window (whisperx.audio.N_SAMPLES)

logger = logging.getLogger("whisperx_service.asr")
# Read at import only for what BentoML needs then (resources, the batcher, the model to package);
# each instance reads the settings again when it starts.
_declared = get_settings()


@bentoml.service(name="asr", **runner_service_config(_declared.asr_threads))
class ASR:
    whisper_model = BentoModel(_declared.asr_model)

    def __init__(self) -> None:
        import whisperx

        configure_logging()
        self.settings = settings = get_settings()
        outlive_gateway(settings.shutdown_grace_s)  # SIGTERM: serve until the gateway has drained
        started = time.perf_counter()
        self.device = settings.resolved_device()
        stored = bentoml.models.get(settings.asr_model)  # the bento's own store when served from one
        self.model_tag = str(stored.tag)
        self.pipeline = whisperx.load_model(
            stored.path,
            self.device,
            compute_type=settings.resolved_compute_type(),
            asr_options={"beam_size": settings.beam_size, "suppress_tokens": settings.asr_suppress_tokens},
            vad_method="pyannote",
            vad_options={"vad_onset": settings.vad_onset, "vad_offset": settings.vad_offset},
            threads=settings.asr_threads,
        )
        # whisperx slides its 5-s VAD window by 0.5 s; a coarser hop is most of the VAD's cost
        # saved for the same chunks (WXS_VAD_STEP_S, measured in its description).
        self.pipeline.vad_model.vad_pipeline._segmentation.step = settings.vad_step_s
        self.whisper = self.pipeline.model
        # The Whisper "n_mels" the model expects (80, or 128 for large-v3).
        self.n_mels = int(self.whisper.feat_kwargs.get("feature_size") or 80)
        self.english_only = not self.whisper.model.is_multilingual
        self._tokenizers: dict[tuple[str, str], Tokenizer] = {}
        logger.info(
            "ASR ready: %s on %s (%s) in %.1f s", self.model_tag, self.device,
            settings.resolved_compute_type(), time.perf_counter() - started,
        )

    # --- helpers -------------------------------------------------------------------------------

    def _features(self, chunk: np.ndarray) -> np.ndarray:
        from whisperx.audio import log_mel_spectrogram

        padding = max(0, WINDOW_SAMPLES - chunk.shape[0])
        mel = log_mel_spectrogram(chunk[:WINDOW_SAMPLES], n_mels=self.n_mels, padding=padding)
        return np.asarray(mel, dtype=np.float32)

    def _ranked_languages(self, audio: np.ndarray) -> list[tuple[str, float]]:
        encoder_output = self.whisper.encode(self._features(np.ascontiguousarray(audio[:WINDOW_SAMPLES])))
        return self._languages_of(encoder_output)[0]

    def _languages_of(self, encoder_output: Any) -> list[list[tuple[str, float]]]:
        """Each batch item's languages, most likely first (tokens like "<|en|>" become "en")."""
        return [[(token[2:-2], float(p)) for token, p in ranked]
                for ranked in self.whisper.model.detect_language(encoder_output)]

    def _tokenizer(self, language: str, task: str) -> Tokenizer:
        from faster_whisper.tokenizer import Tokenizer

        key = (language, task)
        if key not in self._tokenizers:
            self._tokenizers[key] = Tokenizer(
                self.whisper.hf_tokenizer, self.whisper.model.is_multilingual, task=task, language=language
            )
        return self._tokenizers[key]

    def _speech_chunks(self, audio: np.ndarray) -> list[TimeSpan]:
        """whisperx's VAD + merge_chunks, exactly as its pipeline does before decoding."""
        vad = self.pipeline.vad_model
        params = self.pipeline._vad_params
        segments = vad({"waveform": vad.preprocess_audio(audio), "sample_rate": SAMPLE_RATE})
        merged = vad.merge_chunks(segments, params.get("chunk_size", 30), onset=params["vad_onset"], offset=params["vad_offset"])
        return [TimeSpan(start=round(s["start"], 3), end=round(s["end"], 3)) for s in merged]

    # --- APIs ----------------------------------------------------------------------------------

    @bentoml.api
    def plan(self, audio: np.ndarray, request_id: str | None = None) -> AsrPlan:
        """Speech chunks of 16 kHz mono float32 audio (the pipeline decides the language)."""
        with bind_request_id(request_id):
            started = time.perf_counter()
            audio = np.ascontiguousarray(pcm_to_float(audio))
            chunks = self._speech_chunks(audio)
            logger.info("planned %.1f s: %d chunks in %.2f s", audio.shape[0] / SAMPLE_RATE,
                        len(chunks), time.perf_counter() - started)
            return AsrPlan(chunks=chunks, multilingual=not self.english_only, model=self.model_tag)

    @bentoml.api(batchable=True, batch_dim=(0, 0), max_batch_size=_declared.resolved_asr_batch_size(),
                 max_latency_ms=int(_declared.stage_timeout_s * 1000))
    def decode(self, jobs: list[ChunkJob]) -> list[ChunkText]:
        """Decode chunks (from any number of requests) in Whisper batches; results keep their order."""
        started = time.perf_counter()
        results: list[ChunkText | None] = [None] * len(jobs)
        groups: dict[tuple[str | None, str, str | None, tuple[str, ...]], list[int]] = defaultdict(list)
        for index, job in enumerate(jobs):
            groups[(job.language, job.task, job.initial_prompt, tuple(job.aligned_languages))].append(index)
        for (language, task, prompt, aligned), indices in groups.items():
            size = self.settings.resolved_asr_batch_size()
            for first in range(0, len(indices), size):
                part = indices[first:first + size]
                batch = [jobs[i] for i in part]
                if language is None:
                    texts = self._detect_and_decode(batch, task, prompt, aligned)
                else:
                    texts = self._decode_batch(batch, self._encode(batch), language, task, prompt, aligned)
                for index, text in zip(part, texts, strict=True):
                    results[index] = text
        logger.info("decoded a batch of %d chunks (%d groups) in %.2f s", len(jobs), len(groups),
                    time.perf_counter() - started)
        return [r for r in results if r is not None]

    @bentoml.api
    def detect_language(self, audio: np.ndarray, top_k: int = 5) -> LanguageDetection:
        """Language of the first 30 s: the best guess and the top_k most likely languages."""
        if self.english_only:
            return LanguageDetection(language="en", probability=1.0,
                                     alternatives=[LanguageProbability(language="en", probability=1.0)])
        top = [LanguageProbability(language=lang, probability=round(p, 4))
               for lang, p in self._ranked_languages(pcm_to_float(audio))[:max(1, top_k)]]
        return LanguageDetection(language=top[0].language, probability=top[0].probability, alternatives=top)

    # --- decoding --------------------------------------------------------------------------------

    def _encode(self, batch: list[ChunkJob]) -> tuple[np.ndarray, Any]:
        features = np.stack([self._features(pcm_to_float(job.audio)) for job in batch])
        return features, self.whisper.encode(features)

    def _detect_and_decode(
        self, batch: list[ChunkJob], task: str, prompt: str | None, aligned: tuple[str, ...]
    ) -> list[ChunkText]:
        """Chunks without a language: detect it on the encoder output, then decode with it."""
        encoded = self._encode(batch)
        ranked = [languages[0] for languages in self._languages_of(encoded[1])]
        out: list[ChunkText | None] = [None] * len(batch)
        for language in dict.fromkeys(lang for lang, _ in ranked):
            part = [i for i, (lang, _) in enumerate(ranked) if lang == language]
            # Usually one language per batch: reuse the encoder output; else encode each group.
            group = encoded if len(part) == len(batch) else self._encode([batch[i] for i in part])
            texts = self._decode_batch([batch[i] for i in part], group, language, task, prompt, aligned)
            for i, text in zip(part, texts, strict=True):
                out[i] = text.model_copy(update={"language_probability": round(ranked[i][1], 4)})
        return [text for text in out if text is not None]

    def _decode_batch(
        self, batch: list[ChunkJob], encoded: tuple[np.ndarray, Any], language: str, task: str,
        prompt: str | None, aligned: tuple[str, ...],
    ) -> list[ChunkText]:
        tokenizer = self._tokenizer(language, task)
        options = self.pipeline.options
        if prompt:
            options = dataclasses.replace(options, initial_prompt=prompt)
        features, encoder_output = encoded
        texts, logprobs, tokens = self._generate(encoder_output, tokenizer, options, len(batch))
        words: list[list[Word] | None] = [None] * len(batch)
        if word_timing_method(language, aligned) is WordTimestampMethod.whisper:
            words = self._whisper_words(batch, tokens, features, encoder_output, tokenizer, options)
        return [ChunkText(text=t.strip(), avg_logprob=lp, words=w, language=language)
                for t, lp, w in zip(texts, logprobs, words, strict=True)]

    def _generate(
        self, encoder_output: Any, tokenizer: Tokenizer, options: Any, batch_size: int
    ) -> tuple[list[str], list[float], list[list[int]]]:
        """whisperx's batched generation (FasterWhisperPipeline), on an encoder output we keep."""
        previous: list[int] = []
        if options.initial_prompt is not None:
            previous = tokenizer.encode(" " + options.initial_prompt.strip())
        prompt = self.whisper.get_prompt(tokenizer, previous, without_timestamps=options.without_timestamps,
                                         prefix=options.prefix, hotwords=options.hotwords)
        max_length = self.whisper.max_length
        if self.settings.asr_max_new_tokens is not None:
            # CTranslate2's Whisper decodes at most max_length // 2 new tokens, whatever the
            # prompt (measured: 20 -> 10, 104 -> 52, 448 -> 224), like openai-whisper's sample_len.
            max_length = min(max_length, 2 * self.settings.asr_max_new_tokens)
        results = self.whisper.model.generate(
            encoder_output, [prompt] * batch_size, beam_size=options.beam_size, patience=options.patience,
            length_penalty=options.length_penalty, max_length=max_length,
            suppress_blank=options.suppress_blank, suppress_tokens=options.suppress_tokens,
            no_repeat_ngram_size=options.no_repeat_ngram_size,
            repetition_penalty=options.repetition_penalty, return_scores=True,
        )
        tokens = [[t for t in r.sequences_ids[0] if t < tokenizer.eot] for r in results]
        logprobs = [
            float(r.scores[0] * (len(r.sequences_ids[0]) ** options.length_penalty) / (len(r.sequences_ids[0]) + 1))
            for r in results
        ]
        return list(tokenizer.tokenizer.decode_batch(tokens)), logprobs, tokens

    def _whisper_words(
        self, batch: list[ChunkJob], tokens: list[list[int]], features: np.ndarray,
        encoder_output: Any, tokenizer: Tokenizer, options: Any,
    ) -> list[list[Word] | None]:
        """Word timings from cross-attention (faster-whisper's DTW), chunk by chunk.

        One chunk at a time so that a chunk's timings never depend on which other chunks (of
        other requests) shared its batch; the encoder output of the batch is reused on CPU.
        """
        import ctranslate2

        reusable = self.device == "cpu"
        encoded = np.array(encoder_output) if reusable else None
        hop = self.whisper.feature_extractor.hop_length
        out: list[list[Word] | None] = []
        for i, (job, toks) in enumerate(zip(batch, tokens, strict=True)):
            n = min(np.asarray(job.audio).shape[0], WINDOW_SAMPLES)
            # ctranslate2's align takes the encoder output or, on GPU here, the mel features.
            item = ctranslate2.StorageView.from_array(encoded[i:i + 1] if encoded is not None else features[i:i + 1])
            sub: dict[str, Any] = {"tokens": toks, "seek": 0, "start": 0.0, "end": n / SAMPLE_RATE}
            self.whisper.add_word_timestamps(
                [[sub]], tokenizer, item, num_frames=n // hop,
                prepend_punctuations=options.prepend_punctuations,
                append_punctuations=options.append_punctuations,
                last_speech_timestamp=0.0,
            )
            offset, limit = job.offset, job.offset + n / SAMPLE_RATE
            words: list[Word] = []
            for w in sub.get("words", []):
                start = min(max(offset + float(w["start"]), offset), limit)
                end = min(max(offset + float(w["end"]), start), limit)
                if str(w["word"]).strip():
                    words.append(Word(word=str(w["word"]).strip(), start=round(start, 3),
                                      end=round(end, 3), score=round(float(w["probability"]), 3)))
            out.append(words)
        return out
