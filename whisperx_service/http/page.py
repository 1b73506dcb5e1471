"""The transcription web page at ``/`` and a Swagger page at ``/docs``, every asset served here.

BentoML's own index (``/``) embeds a Google Tag Manager script and FastAPI's ``/docs`` loads
Swagger UI from a CDN: on an offline network the browser would try to reach outside hosts. The
page's files live in ``whisperx_service/web``; Swagger UI's are BentoML's bundled copies
(``/static_content``). The guard lets these GETs through without an API key (they hold no secret).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, Response

from ..config import get_settings

WEB_DIR = Path(__file__).resolve().parents[1] / "web"
ASSET_PREFIX = "/ui/"
# The page's files, by name: nothing else under WEB_DIR is served.
ASSETS = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8",
          "docs.js": "text/javascript; charset=utf-8"}
PAGE_PATHS = frozenset({"/", "/docs"})
# No outside origin, even if a file is changed to name one: the browser refuses it.
CSP = ("default-src 'self'; img-src 'self' data:; media-src 'self' blob:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {"content-security-policy": CSP, "x-content-type-options": "nosniff",
                    "referrer-policy": "no-referrer"}

router = APIRouter(include_in_schema=False)


def is_page_path(path: str) -> bool:
    """Whether a GET of `path` is the page, one of its assets or the Swagger page (no key needed)."""
    return path in PAGE_PATHS or (path.startswith(ASSET_PREFIX) and path[len(ASSET_PREFIX):] in ASSETS)


@cache
def _read(name: str) -> str:
    return (WEB_DIR / name).read_text(encoding="utf-8")


@router.get("/")
async def index() -> HTMLResponse:
    """The page; it shows the API-key field only when keys are configured."""
    settings = get_settings()
    auth = "required" if settings.accepted_keys() else "off"
    html = _read("index.html").replace("{{AUTH}}", auth).replace("{{MAX_UPLOAD_MB}}", str(settings.max_upload_mb))
    return HTMLResponse(html, headers=SECURITY_HEADERS)


@router.get(ASSET_PREFIX + "{name}")
async def asset(name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(404, f"no asset {name[:64]!r}")
    return Response(_read(name), media_type=media_type, headers={"cache-control": "no-cache", **SECURITY_HEADERS})


@router.get("/docs")
async def docs() -> HTMLResponse:
    """Swagger UI over BentoML's whole spec (``/docs.json``): BentoML's bundled Swagger UI files,
    started by ``docs.js`` (BentoML's own starter would render its README's badges from outside hosts)."""
    # Swagger UI styles itself inline: the page allows inline styles, nothing else of the default CSP changes.
    csp = CSP.replace("default-src 'self'", "default-src 'self'; style-src 'self' 'unsafe-inline'")
    return HTMLResponse(_read("docs.html"), headers={**SECURITY_HEADERS, "content-security-policy": csp})
