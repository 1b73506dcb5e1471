"""Whisper through whisperx's batched pipeline, split so that chunks batch across requests.

`speech_chunks` is whisperx's VAD + `merge_chunks` (<= 30-s chunks); `decode` decodes chunks
from any number of requests (grouped by language and task, never mixed up): in Whisper batches
with one worker (a GPU), or each chunk on its own by the next free worker (a CPU). A
chunk sent without a language has it detected on its own encoder output, so detection costs no
encoder pass of its own. For languages no aligner holds, `decode` also times the words with
Whisper's own cross-attention (faster-whisper's word timestamps), reusing the batch's encoder
output. whisperx, faster-whisper and ctranslate2 are imported inside: only the ASR runner loads them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from .audio import SAMPLE_RATE, pcm_to_float
from .config import Settings
from .schema import (
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

WINDOW_SAMPLES = 30 * SAMPLE_RATE  # Whisper's input window (whisperx.audio.N_SAMPLES)
LANGUAGES_KEPT = 5  # a detected chunk reports its most likely languages, for the recording's vote

logger = logging.getLogger("whisperx_service.asr")


class WhisperDecoder:
    """One faster-whisper model (a CTranslate2 directory) and whisperx's VAD, loaded once."""

    def __init__(self, path: str, tag: str, settings: Settings) -> None:
        import whisperx
        from whisperx.asr import WhisperModel

        started = time.perf_counter()
        self.settings = settings
        self.device = settings.resolved_device()
        self.model_tag = tag
        # Workers (CTranslate2 replicas) decode chunks side by side, each on its share of the
        # threads: on a CPU one chunk on one thread costs the least CPU, and chunks run on all cores.
        self.workers = settings.resolved_asr_workers()
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="whisper") if self.workers > 1 else None
        # whisperx.load_model reads compute_type and threads only to build the model it is given here.
        self.pipeline = whisperx.load_model(
            path,
            self.device,
            model=WhisperModel(path, device=self.device, compute_type=settings.resolved_compute_type(),
                               cpu_threads=max(1, settings.asr_threads // self.workers), num_workers=self.workers),
            asr_options={"beam_size": settings.beam_size, "suppress_tokens": settings.asr_suppress_tokens},
            vad_method="pyannote",
            vad_options={"vad_onset": settings.vad_onset, "vad_offset": settings.vad_offset},
        )
        # whisperx slides its 5-s VAD window by 0.5 s; a coarser hop is most of the VAD's cost
        # saved for the same chunks (WXS_VAD_STEP_S).
        self.pipeline.vad_model.vad_pipeline._segmentation.step = settings.vad_step_s
        self.whisper = self.pipeline.model
        # The Whisper "n_mels" the model expects (80, or 128 for large-v3).
        self.n_mels = int(self.whisper.feat_kwargs.get("feature_size") or 80)
        self.english_only = not self.whisper.model.is_multilingual
        self._tokenizers: dict[tuple[str, str], Tokenizer] = {}
        logger.info("ASR ready: %s on %s (%s) in %.1f s", tag, self.device, settings.resolved_compute_type(),
                    time.perf_counter() - started)

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

    def tokenizer(self, language: str, task: str) -> Tokenizer:
        from faster_whisper.tokenizer import Tokenizer

        key = (language, task)
        if key not in self._tokenizers:
            self._tokenizers[key] = Tokenizer(
                self.whisper.hf_tokenizer, self.whisper.model.is_multilingual, task=task, language=language
            )
        return self._tokenizers[key]

    def speech_chunks(self, audio: np.ndarray) -> list[TimeSpan]:
        """whisperx's VAD + merge_chunks, exactly as its pipeline does before decoding (16-bit PCM
        or float32 samples)."""
        return self.speech_plan(audio)[0]

    def speech_plan(self, audio: np.ndarray) -> tuple[list[TimeSpan], list[list[TimeSpan]]]:
        """The speech chunks (as `speech_chunks`) and, for each, the VAD's voiced pieces in it."""
        audio = np.ascontiguousarray(pcm_to_float(audio))
        vad = self.pipeline.vad_model
        params = self.pipeline._vad_params
        segments = vad({"waveform": vad.preprocess_audio(audio), "sample_rate": SAMPLE_RATE})
        merged = vad.merge_chunks(segments, params.get("chunk_size", 30), onset=params["vad_onset"], offset=params["vad_offset"])
        chunks = [TimeSpan(start=round(s["start"], 3), end=round(s["end"], 3)) for s in merged]
        pieces = [[TimeSpan(start=round(float(a), 3), end=round(float(b), 3)) for a, b in s.get("segments", [])]
                  for s in merged]
        return chunks, pieces

    # --- decoding --------------------------------------------------------------------------------

    def decode(self, jobs: list[ChunkJob]) -> list[ChunkText]:
        """Decode chunks (from any number of requests) in Whisper batches; results keep their order."""
        started = time.perf_counter()
        results: list[ChunkText | None] = [None] * len(jobs)
        groups: dict[tuple[str | None, str, str | None, tuple[str, ...]], list[int]] = defaultdict(list)
        for index, job in enumerate(jobs):
            groups[(job.language, job.task, job.initial_prompt, tuple(job.aligned_languages))].append(index)
        size = 1 if self._pool is not None else self.settings.resolved_asr_batch_size()
        batches = [(key, indices[first:first + size]) for key, indices in groups.items()
                   for first in range(0, len(indices), size)]

        def run(batch: tuple[tuple[str | None, str, str | None, tuple[str, ...]], list[int]]) -> None:
            (language, task, prompt, aligned), part = batch
            chunks = [jobs[i] for i in part]
            if language is None:
                texts = self._detect_and_decode(chunks, task, prompt, aligned)
            else:
                texts = self._decode_batch(chunks, self._encode(chunks), language, task, prompt, aligned)
            for index, text in zip(part, texts, strict=True):
                results[index] = text

        if self._pool is not None and len(batches) > 1:
            list(self._pool.map(run, batches))
        else:
            for batch in batches:
                run(batch)
        logger.info("decoded a batch of %d chunks (%d groups) in %.2f s", len(jobs), len(groups),
                    time.perf_counter() - started)
        return [r for r in results if r is not None]

    def detect_language(self, audio: np.ndarray, top_k: int = 5) -> LanguageDetection:
        """Language of the first 30 s: the best guess and the top_k most likely languages."""
        if self.english_only:
            return LanguageDetection(language="en", probability=1.0,
                                     alternatives=[LanguageProbability(language="en", probability=1.0)])
        top = [LanguageProbability(language=lang, probability=round(p, 4))
               for lang, p in self._ranked_languages(pcm_to_float(audio))[:max(1, top_k)]]
        return LanguageDetection(language=top[0].language, probability=top[0].probability, alternatives=top)


    def _encode(self, batch: list[ChunkJob]) -> tuple[np.ndarray, Any]:
        features = np.stack([self._features(pcm_to_float(job.audio)) for job in batch])
        return features, self.whisper.encode(features)

    def _detect_and_decode(
        self, batch: list[ChunkJob], task: str, prompt: str | None, aligned: tuple[str, ...]
    ) -> list[ChunkText]:
        """Chunks without a language: detect it on the encoder output, then decode with it."""
        encoded = self._encode(batch)
        everything = self._languages_of(encoded[1])
        ranked = [languages[0] for languages in everything]
        out: list[ChunkText | None] = [None] * len(batch)
        for language in dict.fromkeys(lang for lang, _ in ranked):
            part = [i for i, (lang, _) in enumerate(ranked) if lang == language]
            # Usually one language per batch: reuse the encoder output; else encode each group.
            group = encoded if len(part) == len(batch) else self._encode([batch[i] for i in part])
            texts = self._decode_batch([batch[i] for i in part], group, language, task, prompt, aligned)
            for i, text in zip(part, texts, strict=True):
                out[i] = text.model_copy(update={
                    "language_probability": round(ranked[i][1], 4),
                    "languages": [LanguageProbability(language=lang, probability=round(p, 4))
                                  for lang, p in everything[i][:LANGUAGES_KEPT]],
                })
        return [text for text in out if text is not None]

    def _decode_batch(
        self, batch: list[ChunkJob], encoded: tuple[np.ndarray, Any], language: str, task: str,
        prompt: str | None, aligned: tuple[str, ...],
    ) -> list[ChunkText]:
        tokenizer = self.tokenizer(language, task)
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
