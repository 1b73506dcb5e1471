"""Stored voices: the store's semantics on both backends (a directory, a real redis-server), kept
across a restart of the store; ids checked; the cap on known speakers counts stored voices; and the
/v1/speakers routes in process (the app behind its guard, a fake gateway whose runner makes prints)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bentoml
import httpx
import numpy as np
import pytest
import soundfile

from tests.data import JFK_FLAC
from tests.redis_server import redis_server
from tests.unit.test_http import FakeGateway, FakePipeline
from whisperx_service.config import Settings
from whisperx_service.errors import InvalidRequest, UnsupportedValue, VoiceModelChanged
from whisperx_service.guard import GatewayGuard
from whisperx_service.http import build_app
from whisperx_service.naming import MAX_KNOWN_SPEAKERS
from whisperx_service.params import (
    SpeakerReference,
    TranscribeParams,
    parse_speaker_ids,
    with_speaker_references,
)
from whisperx_service.voices import (
    LocalVoiceStore,
    RedisVoiceStore,
    VoiceStore,
    is_voice_id,
    local_voice_dir,
    new_voice_id,
    open_voice_store,
    resolve_voices,
)

MODEL = "pyannote:embedded:v1"


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture(params=["local", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A factory of stores on one backend's storage: each call is the store after a restart."""
    if request.param == "local":
        return lambda: LocalVoiceStore(tmp_path / "voices")
    url = request.getfixturevalue("redis_url")

    async def flush() -> None:
        store = RedisVoiceStore(url)
        await store.redis.flushdb()
        await store.close()

    asyncio.run(flush())
    return lambda: RedisVoiceStore(url)


def test_store_semantics_and_a_restart_keeps_the_voices(make_store: Any) -> None:
    async def scenario() -> None:
        store: VoiceStore = make_store()
        assert await store.all() == []
        ann = await store.add("Ann", 4.25, MODEL, np.arange(4, dtype=np.float32))
        bob = await store.add("Bob", 6.0, MODEL, np.ones(4, dtype=np.float32))
        assert is_voice_id(ann.id) and ann.id != bob.id
        assert (ann.name, ann.duration, ann.model, ann.voice_print) == ("Ann", 4.25, MODEL, [0.0, 1.0, 2.0, 3.0])
        assert "voice_print" not in ann.public().model_dump()
        assert await store.get(ann.id) == ann
        assert [v.id for v in await store.all()] == [v.id for v in sorted([ann, bob], key=lambda v: (v.created_at,
                                                                                                      v.id))]
        await store.close()

        restarted: VoiceStore = make_store()  # a new gateway process on the same storage
        assert await restarted.get(bob.id) == bob
        assert await restarted.delete(ann.id) is True
        assert await restarted.delete(ann.id) is False  # gone already
        assert await restarted.get(ann.id) is None
        assert [v.id for v in await restarted.all()] == [bob.id]
        assert await restarted.get(new_voice_id()) is None
        for bad in ("../etc/passwd", "spk_XYZ", "", bob.id + "0", bob.id.upper()):
            assert await restarted.get(bad) is None
            assert await restarted.delete(bad) is False
        assert [v.id for v in await restarted.all()] == [bob.id]
        await restarted.close()

    asyncio.run(scenario())


def test_local_voices_are_private_files_beside_the_task_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENTOML_RESULT_STORE", str(tmp_path / "state" / "task_result.db"))
    from bentoml._internal.configuration.containers import BentoMLContainer

    BentoMLContainer.result_store_file.reset()
    try:
        assert local_voice_dir(Settings()) == tmp_path / "state" / "voices"
    finally:
        BentoMLContainer.result_store_file.reset()
    assert local_voice_dir(Settings(voice_dir=tmp_path / "elsewhere")) == tmp_path / "elsewhere"
    assert isinstance(open_voice_store(Settings(job_store="redis://127.0.0.1:1/0")), RedisVoiceStore)

    store = LocalVoiceStore(tmp_path / "voices")
    voice = asyncio.run(store.add("Ann", 3.0, MODEL, np.ones(3)))
    assert (tmp_path / "voices").stat().st_mode & 0o777 == 0o700
    assert [p.name for p in (tmp_path / "voices").iterdir()] == [f"{voice.id}.json"]  # no temporary left
    assert (tmp_path / "voices" / f"{voice.id}.json").stat().st_mode & 0o777 == 0o600
    damaged = tmp_path / "voices" / f"{new_voice_id()}.json"
    damaged.write_text("{not json")  # damaged outside the service: the others still list
    assert [v.id for v in asyncio.run(store.all())] == [voice.id]
    assert asyncio.run(store.get(damaged.stem)) is None


def test_resolving_ids_unknown_changed_model_and_names_given_twice() -> None:
    async def scenario(tmp: Path) -> None:
        store = LocalVoiceStore(tmp)
        ann = await store.add("Ann", 3.0, MODEL, np.array([1.0, 0.0]))
        old = await store.add("Old", 3.0, "pyannote:embedded:v0", np.array([0.0, 1.0]))
        (known,) = await resolve_voices(store, [ann.id], MODEL)
        assert known.name == "Ann" and known.audio is None and known.voice_print is not None
        assert known.voice_print.tolist() == [1.0, 0.0]
        with pytest.raises(UnsupportedValue) as unknown:
            await resolve_voices(store, [new_voice_id()], MODEL)
        assert (unknown.value.status_code, unknown.value.param) == (400, "known_speaker_ids")
        with pytest.raises(VoiceModelChanged) as changed:
            await resolve_voices(store, [old.id], MODEL)
        assert (changed.value.status_code, changed.value.param) == (409, "known_speaker_ids")
        with pytest.raises(UnsupportedValue, match="named 'Ann'"):
            await resolve_voices(store, [ann.id], MODEL, taken_names=["Ann"])

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(scenario(Path(tmp)))


def test_ids_are_checked_and_count_in_the_cap() -> None:
    ids = [new_voice_id() for _ in range(MAX_KNOWN_SPEAKERS + 1)]
    assert parse_speaker_ids([f" {ids[0]} ", ""]) == (ids[0],)
    for bad in (["spk_123"], ["../../x"], [ids[0], ids[0]]):
        with pytest.raises(UnsupportedValue) as error:
            parse_speaker_ids(bad)
        assert error.value.param == "known_speaker_ids"
    references = tuple(SpeakerReference(name=f"N{i}", data=b"") for i in range(MAX_KNOWN_SPEAKERS - 1))
    named = with_speaker_references(TranscribeParams(diarize=False), references, diarize_given=False,
                                    speaker_ids=(ids[0],))
    assert named.diarize and named.speaker_ids == (ids[0],) and len(named.speaker_references) == 3
    with pytest.raises(UnsupportedValue) as over:
        with_speaker_references(TranscribeParams(), references, diarize_given=False, speaker_ids=tuple(ids[:2]))
    assert over.value.param == "known_speaker_ids"
    only_ids = with_speaker_references(TranscribeParams(), (), diarize_given=False,
                                       speaker_ids=tuple(ids[:MAX_KNOWN_SPEAKERS]))
    assert len(only_ids.speaker_ids) == MAX_KNOWN_SPEAKERS
    with pytest.raises(InvalidRequest) as off:
        with_speaker_references(TranscribeParams(diarize=False), (), diarize_given=True, speaker_ids=(ids[0],))
    assert off.value.param == "diarize"


# --- the routes, in process ------------------------------------------------------------------


class PrintingPipeline(FakePipeline):
    """A fake pipeline whose runner makes voice prints (the sample's length, one-hot), and which
    keeps the known speakers each run gets."""

    def __init__(self, model: str = MODEL) -> None:
        super().__init__()
        self.model = model
        self.known: list[Any] = []

    async def voice_model(self) -> str:
        return self.model

    async def voice_print(self, audio: np.ndarray, request_id: str | None = None) -> np.ndarray:
        return np.eye(16, dtype=np.float32)[round(audio.shape[0] / 16000)] if self.model else np.zeros(0)

    async def run(self, audio: np.ndarray, params: Any, **kwargs: Any) -> Any:
        self.known = list(kwargs.get("known_speakers", ()))
        return await super().run(audio, params, **kwargs)


def _sample(seconds: float, fmt: str = "WAV", start: float = 1.0) -> bytes:
    audio, rate = soundfile.read(str(JFK_FLAC), dtype="float32", always_2d=True)
    clip = audio[int(start * rate):int((start + seconds) * rate), 0]
    assert len(clip) == int(seconds * rate)
    buffer = io.BytesIO()
    soundfile.write(buffer, clip, rate, format=fmt)
    return buffer.getvalue()


class Routes:
    def __init__(self, tmp: Path, settings: Settings | None = None, pipeline: PrintingPipeline | None = None) -> None:
        self.pipeline = pipeline or PrintingPipeline()
        self.gateway = FakeGateway(self.pipeline)  # type: ignore[arg-type]
        self.gateway.settings = settings or Settings()
        self.gateway.voices = LocalVoiceStore(tmp)  # type: ignore[attr-defined]

    async def __aenter__(self) -> httpx.AsyncClient:
        app = build_app()
        app.dependency_overrides[bentoml.get_current_service] = lambda: self.gateway
        guarded = GatewayGuard(app, settings=self.gateway.settings, gateway=lambda: self.gateway)
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=guarded), base_url="http://test")
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()


def _error(response: httpx.Response, status: int, param: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["param"] == param and error["request_id"] == response.headers["x-request-id"]
    return error


@pytest.fixture
def spool_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setenv("WXS_TMP_DIR", str(spool))
    yield spool
    assert list(spool.iterdir()) == []  # every sample's spool removed


async def _post(client: httpx.AsyncClient, name: str | None, data: bytes, kind: str = "audio/wav") -> httpx.Response:
    fields = {} if name is None else {"name": name}
    return await client.post("/v1/speakers", data=fields, files={"file": ("voice.wav", data, kind)})


def test_create_list_read_delete(tmp_path: Path, spool_dir: Path) -> None:
    async def scenario() -> None:
        async with Routes(tmp_path / "voices", Settings(tmp_dir=spool_dir)) as client:
            created = await _post(client, " Kennedy ", _sample(5.0))
            assert created.status_code == 201, created.text
            voice = created.json()
            assert set(voice) == {"id", "object", "name", "created_at", "duration", "model"}
            assert (voice["object"], voice["name"], voice["duration"], voice["model"]) == (
                "speaker", "Kennedy", 5.0, MODEL)
            assert is_voice_id(voice["id"]) and created.headers["x-request-id"]
            listed = (await client.get("/v1/speakers")).json()
            assert listed == {"object": "list", "data": [voice]}
            assert (await client.get(f"/v1/speakers/{voice['id']}")).json() == voice
            deleted = await client.delete(f"/v1/speakers/{voice['id']}")
            assert deleted.status_code == 204 and deleted.content == b""
            _error(await client.get(f"/v1/speakers/{voice['id']}"), 404, "speaker_id")
            _error(await client.delete(f"/v1/speakers/{voice['id']}"), 404, "speaker_id")
            _error(await client.get("/v1/speakers/not-an-id"), 404, "speaker_id")
            assert (await client.get("/v1/speakers")).json()["data"] == []

    asyncio.run(scenario())


@pytest.mark.parametrize(("name", "data", "kind", "status", "param"), [
    (None, _sample(5.0), "audio/wav", 400, "name"),
    ("x" * 65, _sample(5.0), "audio/wav", 400, "name"),
    ("Ann", _sample(1.0), "audio/wav", 400, "file"),  # too short to tell a voice
    ("Ann", _sample(10.8, "FLAC", start=0.0), "audio/flac", 400, "file"),  # too long
    ("Ann", b"not audio at all" * 100, "audio/wav", 400, "file"),
    ("Ann", b"hello", "text/plain", 415, None),
])
def test_bad_samples_and_names(tmp_path: Path, spool_dir: Path, name: str | None, data: bytes, kind: str,
                               status: int, param: str | None) -> None:
    async def scenario() -> None:
        async with Routes(tmp_path / "voices", Settings(tmp_dir=spool_dir)) as client:
            response = await _post(client, name, data, kind)
            error = _error(response, status, param) if param else response.json()["error"]
            assert response.status_code == status
            assert "Traceback" not in error["message"]
            assert (await client.get("/v1/speakers")).json()["data"] == []  # nothing stored

    asyncio.run(scenario())


def test_no_embedding_model_and_a_full_store(tmp_path: Path, spool_dir: Path) -> None:
    async def scenario() -> None:
        async with Routes(tmp_path / "a", Settings(tmp_dir=spool_dir), PrintingPipeline(model="")) as client:
            assert (await _post(client, "Ann", _sample(4.0))).status_code == 501
        async with Routes(tmp_path / "b", Settings(tmp_dir=spool_dir, max_stored_voices=1)) as client:
            assert (await _post(client, "Ann", _sample(4.0))).status_code == 201
            full = await _post(client, "Bob", _sample(4.0))
            assert full.status_code == 409 and full.json()["error"]["code"] == "voice_store_full"

    asyncio.run(scenario())


def test_the_routes_take_the_api_key(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Routes(tmp_path / "voices", Settings(api_keys="sesame")) as client:  # type: ignore[arg-type]
            for method, path in (("GET", "/v1/speakers"), ("GET", f"/v1/speakers/{new_voice_id()}"),
                                 ("DELETE", f"/v1/speakers/{new_voice_id()}")):
                assert (await client.request(method, path)).status_code == 401
            assert (await _post(client, "Ann", _sample(4.0))).status_code == 401
            keyed = await client.get("/v1/speakers", headers={"authorization": "Bearer sesame"})
            assert keyed.status_code == 200

    asyncio.run(scenario())


@pytest.mark.parametrize("route", ["/transcribe", "/v1/audio/transcriptions"])
def test_known_speaker_ids_reach_the_pipeline_as_prints(tmp_path: Path, spool_dir: Path, route: str) -> None:
    file_field = "audio_file" if route == "/transcribe" else "file"

    async def transcribe(client: httpx.AsyncClient, ids: list[str], **extra: Any) -> httpx.Response:
        return await client.post(route, files={file_field: ("jfk.flac", JFK_FLAC.read_bytes(), "audio/flac")},
                                 data={"known_speaker_ids[]": ids, "response_format": "diarized_json", **extra})

    async def scenario() -> None:
        routes = Routes(tmp_path / "voices", Settings(tmp_dir=spool_dir))
        async with routes as client:
            voice = (await _post(client, "Kennedy", _sample(3.0))).json()
            done = await transcribe(client, [voice["id"]])
            assert done.status_code == 200, done.text
            (known,) = routes.pipeline.known
            assert known.name == "Kennedy" and known.audio is None
            assert known.voice_print.tolist() == np.eye(16)[3].tolist()
            _error(await transcribe(client, [new_voice_id()]), 400, "known_speaker_ids")
            _error(await transcribe(client, ["spk_nope"]), 400, "known_speaker_ids")
            routes.pipeline.model = "pyannote:embedded:v2"  # the diarization model changed since
            _error(await transcribe(client, [voice["id"]]), 409, "known_speaker_ids")
            routes.pipeline.model = MODEL
            await client.delete(f"/v1/speakers/{voice['id']}")
            _error(await transcribe(client, [voice["id"]]), 400, "known_speaker_ids")

    asyncio.run(scenario())


def test_a_job_form_keeps_every_id_as_bentoml_reads_it(tmp_path: Path) -> None:
    """BentoML keeps one value of a repeated form field and hands the task its fields by name: the
    job input must still hold every id (and every name and sample) the client sent."""
    from _bentoml_impl.serde import MultipartSerde
    from bentoml._internal.context import _request_var
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from whisperx_service.http.jobs import JOB_INPUTS

    ids = [new_voice_id() for _ in range(3)]

    async def parse(request: Request) -> JSONResponse:
        request.state.temp_dir = str(tmp_path)
        token = _request_var.set(request)
        try:
            kind = JOB_INPUTS[request.path_params["kind"]]
            parsed = await kind.from_http_request(request, MultipartSerde())
            # What the task gets: the fields by name, validated again.
            again = kind.model_validate({k: getattr(parsed, k) for k in kind.model_fields})
        finally:
            _request_var.reset(token)
        return JSONResponse({"parsed": [parsed.known_speaker_ids, parsed.known_speaker_names],  # type: ignore[union-attr]
                             "again": [again.known_speaker_ids, again.known_speaker_names]})

    async def scenario() -> None:
        app = Starlette(routes=[Route("/{kind}", parse, methods=["POST"])])
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            for kind, file_field in (("transcribe", "audio_file"), ("transcription", "file")):
                response = await client.post(f"/{kind}", files={file_field: ("a.wav", _sample(3.0), "audio/wav")},
                                             data={"known_speaker_ids[]": ids, "known_speaker_names[]": ["Ann"]})
                assert response.status_code == 200, response.text
                assert response.json() == {"parsed": [ids, ["Ann"]], "again": [ids, ["Ann"]]}

    asyncio.run(scenario())
