"""Stored voices: a name and the voice print of a 2-10 s sample, kept for later requests
(``POST /v1/speakers``, then ``known_speaker_ids[]`` on a transcription).

What is kept is the print (the diarization runner's speaker embedding, made once when the voice
is stored), the name, and the id of the model that made the print - never the sample's audio.
Prints of two embedding models do not compare, so a voice whose model is not the one serving now
is refused (409 `voice_model_changed`: store it again) rather than recomputed: recomputing would
mean keeping every person's recorded voice, for an event (a new diarization model) an operator
makes on purpose and rarely.

They live where the async jobs live (`Settings.job_store`): with the local store, one JSON file
per voice in a directory next to BentoML's task store (`WXS_VOICE_DIR` to choose another); with
a Redis job store, one hash (`wxs:voices`, id -> JSON) that every gateway replica reads. Both are
`VoiceStore`: the records, ids and checks are here once, each backend only reads and writes bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from .config import Settings
from .errors import UnsupportedValue, VoiceModelChanged
from .naming import KnownSpeaker

logger = logging.getLogger("whisperx_service.voices")
VOICE_ID = re.compile(r"spk_[0-9a-f]{32}")
REDIS_KEY = "wxs:voices"  # the job store's key prefix (whisperx_service.jobstore)


def new_voice_id() -> str:
    return f"spk_{uuid.uuid4().hex}"


def is_voice_id(value: str) -> bool:
    return VOICE_ID.fullmatch(value) is not None


class Speaker(BaseModel):
    """A stored voice, as the API shows it (its print stays inside)."""

    id: str = Field(examples=["spk_0f3c2a9b8d7e4f6a1b2c3d4e5f6a7b8c"])
    object: str = "speaker"
    name: str = Field(examples=["Alice"])
    created_at: int = Field(description="Unix time the voice was stored.", examples=[1764806400])
    duration: float = Field(description="Seconds of the voice sample.", examples=[6.5])
    model: str = Field(description="The speaker-embedding model that made its voice print.",
                       examples=["pyannote:pyannote-embedded:3xq7z"])


class SpeakerList(BaseModel):
    object: str = "list"
    data: list[Speaker]


class StoredVoice(Speaker):
    """What the store keeps of a voice: the API's fields and the print."""

    voice_print: list[float]

    def public(self) -> Speaker:
        return Speaker.model_validate(self.model_dump(exclude={"voice_print"}))


class VoiceStore:
    """Stored voices by id. Subclasses only move bytes (`_write`, `_read`, `_read_all`, `_remove`)."""

    async def add(self, name: str, duration: float, model: str, voice_print: np.ndarray) -> StoredVoice:
        voice = StoredVoice(id=new_voice_id(), name=name, created_at=int(time.time()),
                            duration=round(duration, 3), model=model,
                            voice_print=[float(x) for x in np.asarray(voice_print).reshape(-1)])
        await self._write(voice.id, voice.model_dump_json().encode())
        return voice

    async def get(self, voice_id: str) -> StoredVoice | None:
        if not is_voice_id(voice_id):
            return None
        raw = await self._read(voice_id)
        return None if raw is None else _parsed(raw)

    async def all(self) -> list[StoredVoice]:
        voices = [voice for raw in await self._read_all() if (voice := _parsed(raw)) is not None]
        return sorted(voices, key=lambda v: (v.created_at, v.id))

    async def delete(self, voice_id: str) -> bool:
        """Whether there was such a voice (now gone)."""
        return is_voice_id(voice_id) and await self._remove(voice_id)

    async def close(self) -> None:
        return None

    async def _write(self, voice_id: str, data: bytes) -> None:
        raise NotImplementedError

    async def _read(self, voice_id: str) -> bytes | None:
        raise NotImplementedError

    async def _read_all(self) -> list[bytes]:
        raise NotImplementedError

    async def _remove(self, voice_id: str) -> bool:
        raise NotImplementedError


def _parsed(raw: bytes) -> StoredVoice | None:
    """A stored record; None (logged) for one damaged outside the service, as if it were not there."""
    try:
        return StoredVoice.model_validate_json(raw)
    except ValidationError:
        logger.warning("skipped an unreadable stored voice (%d bytes)", len(raw))
        return None


class LocalVoiceStore(VoiceStore):
    """One JSON file per voice (``<id>.json``, mode 0600) in a directory of mode 0700; each file is
    written whole to a temporary name and renamed, so a reader never sees half of one."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, voice_id: str) -> Path:
        return self.directory / f"{voice_id}.json"

    async def _write(self, voice_id: str, data: bytes) -> None:
        await asyncio.to_thread(self._write_file, self._path(voice_id), data)

    def _write_file(self, path: Path, data: bytes) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.directory, prefix=".voice-", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    async def _read(self, voice_id: str) -> bytes | None:
        def read() -> bytes | None:
            try:
                return self._path(voice_id).read_bytes()
            except FileNotFoundError:
                return None

        return await asyncio.to_thread(read)

    async def _read_all(self) -> list[bytes]:
        def read_all() -> list[bytes]:
            out = []
            for path in sorted(self.directory.glob("spk_*.json")):
                with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                    out.append(path.read_bytes())
            return out

        return await asyncio.to_thread(read_all)

    async def _remove(self, voice_id: str) -> bool:
        def remove() -> bool:
            try:
                self._path(voice_id).unlink()
            except FileNotFoundError:
                return False
            return True

        return await asyncio.to_thread(remove)


class RedisVoiceStore(VoiceStore):
    """One Redis hash, id -> the voice's JSON: what every gateway replica sharing the job store reads."""

    def __init__(self, url: str) -> None:
        from redis.asyncio import Redis

        self.redis = Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5, health_check_interval=15)

    async def close(self) -> None:
        await self.redis.aclose()

    async def _write(self, voice_id: str, data: bytes) -> None:
        await self.redis.hset(REDIS_KEY, voice_id, data)

    async def _read(self, voice_id: str) -> bytes | None:
        raw: Any = await self.redis.hget(REDIS_KEY, voice_id)
        return None if raw is None else bytes(raw)

    async def _read_all(self) -> list[bytes]:
        raw: Any = await self.redis.hvals(REDIS_KEY)
        return [bytes(value) for value in raw]

    async def _remove(self, voice_id: str) -> bool:
        return bool(await self.redis.hdel(REDIS_KEY, voice_id))


def local_voice_dir(settings: Settings) -> Path:
    """`WXS_VOICE_DIR`, else ``voices/`` beside BentoML's task store (the local job store's file)."""
    if settings.voice_dir is not None:
        return settings.voice_dir
    from bentoml._internal.configuration.containers import BentoMLContainer

    return Path(BentoMLContainer.result_store_file.get()).parent / "voices"


def open_voice_store(settings: Settings) -> VoiceStore:
    """The store of the configured job store: Redis when `WXS_JOB_STORE` is a Redis URL, else local."""
    url = settings.redis_job_store()
    return RedisVoiceStore(url) if url else LocalVoiceStore(local_voice_dir(settings))


async def resolve_voices(store: VoiceStore, ids: Sequence[str], model: str,
                         taken_names: Sequence[str] = ()) -> list[KnownSpeaker]:
    """The stored voices `ids` as known speakers: 400 (`known_speaker_ids`) for an id the store
    does not hold or a name given twice, 409 for a print of another model than `model`."""
    known = []
    names = set(taken_names)
    for voice_id in ids:
        voice = await store.get(voice_id)
        if voice is None:
            raise UnsupportedValue(f"no stored voice has the id {voice_id[:60]!r} (deleted, or never "
                                   "stored here)", param="known_speaker_ids")
        if voice.model != model:
            raise VoiceModelChanged(
                f"the voice print of {voice.id} ({voice.name[:40]!r}) was made by {voice.model!r}, "
                f"the speaker model now is {model or 'none'!r}: store the voice again (POST /v1/speakers)",
                param="known_speaker_ids")
        if voice.name in names:
            raise UnsupportedValue(f"two known speakers are named {voice.name[:40]!r}: each name once",
                                   param="known_speaker_ids")
        names.add(voice.name)
        known.append(KnownSpeaker(name=voice.name, voice_print=np.asarray(voice.voice_print, dtype=np.float32)))
    return known
