"""The web page and the Swagger page in process (the app behind its guard, keys configured, no
models, no server): served without a key, every asset local, no outside URL in any of them; and
the job form the page submits is read as sent."""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from bentoml._internal.context import _request_var
from starlette.datastructures import Headers, UploadFile
from starlette.requests import Request

from whisperx_service.audio import check_upload_type
from whisperx_service.config import Settings, get_settings
from whisperx_service.errors import UnsupportedMediaType
from whisperx_service.guard import GatewayGuard
from whisperx_service.http import build_app
from whisperx_service.http.jobs import TranscribeJobInput
from whisperx_service.http.page import ASSETS, WEB_DIR

# Any absolute URL: the page may only name its own origin, by relative paths.
ABSOLUTE_URL = re.compile(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", re.IGNORECASE)


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    # The page reads the process's settings (as the guard gets them in service.py): re-read per test.
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _get(*paths: str) -> list[httpx.Response]:
    settings = get_settings()
    guarded = GatewayGuard(build_app(), settings=settings, gateway=lambda: None)

    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guarded), base_url="http://test") as client:
            return [await client.get(path) for path in paths]

    return asyncio.run(go())


def test_the_page_and_its_assets_are_served_without_a_key_and_name_no_outside_host(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WXS_API_KEYS", "k1")
    page, *assets = _get("/", *(f"/ui/{name}" for name in ASSETS))
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'data-auth="required"' in page.text  # keys configured: the page shows the key field
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for src in re.findall(r'(?:src|href)="([^"]+)"', page.text):
        assert src.startswith(("/", "data:")), src
    for response in (page, *assets):
        assert response.status_code == 200, response.url
        assert not ABSOLUTE_URL.search(response.text), (response.url, ABSOLUTE_URL.search(response.text))
        assert "googletagmanager" not in response.text.lower()


def test_every_file_of_the_page_is_local() -> None:
    for path in WEB_DIR.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not ABSOLUTE_URL.search(text), (path.name, ABSOLUTE_URL.search(text))


def test_docs_is_a_local_swagger_page_and_the_api_still_needs_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WXS_API_KEYS", "k1")
    docs, api, unknown_asset = _get("/docs", "/v1/models", "/ui/index.html")
    assert docs.status_code == 200 and "swagger-ui" in docs.text
    for src in re.findall(r'(?:src|href)="([^"]+)"', docs.text):
        assert src.startswith(("/", "data:")), src
    assert not ABSOLUTE_URL.search(docs.text)
    assert api.status_code == 401
    assert unknown_asset.status_code == 401  # not one of the page's assets: the key is required


def test_without_keys_the_page_hides_the_key_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WXS_API_KEYS", raising=False)
    monkeypatch.delenv("WXS_API_KEYS_FILE", raising=False)
    (page,) = _get("/")
    assert 'data-auth="off"' in page.text


def test_a_job_form_keeps_the_fields_as_sent_and_the_declared_type(tmp_path: Path) -> None:
    # BentoML reads a job's text fields as JSON (true -> True, 2 -> 2) and spools the file part
    # without its headers: the page's job must still be read, and a text file still get its 415.
    request = Request({"type": "http", "headers": [], "state": {"temp_dir": str(tmp_path)}})
    token = _request_var.set(request)
    try:
        upload = UploadFile(io.BytesIO(b"notes"), filename="notes.txt",
                            headers=Headers({"content-type": "text/plain"}))
        form = TranscribeJobInput.model_validate(
            {"audio_file": upload, "diarize": True, "min_speakers": 2, "language": "en"})
    finally:
        _request_var.reset(token)
    assert (form.diarize, form.min_speakers, form.declared_type) == ("true", "2", "text/plain")
    # The job re-validates its fields from the model: the declared type survives that.
    again = TranscribeJobInput.model_validate({k: getattr(form, k) for k in TranscribeJobInput.model_fields})
    assert again.declared_type == "text/plain" and again.audio_file.read_bytes() == b"notes"
    with pytest.raises(UnsupportedMediaType):
        check_upload_type(again.declared_type, Settings().accepted_upload_types)
    assert "declared_type" not in json.dumps(TranscribeJobInput.model_json_schema())
