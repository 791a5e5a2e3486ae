"""GET /playground: a page that runs one prompt on the plain, power and distilled routes side by side.

The page is static (service/api/static/playground: HTML, plain JavaScript, CSS) and public: it holds
no data. It calls /v1 from the browser, with the API key the user types in when keys are configured.
Its Content-Security-Policy lets it load and call nothing but this server.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

__all__ = ["router"]

router = APIRouter(tags=["playground"])

PAGE_DIR = Path(__file__).resolve().parent.parent / "static" / "playground"
# The page's files and their types; nothing else under /playground is served.
ASSETS = {"playground.js": "text/javascript", "playground.css": "text/css"}
HEADERS = {"content-security-policy": "default-src 'self'", "cache-control": "no-cache"}


@router.get("/playground", include_in_schema=False)
async def playground() -> FileResponse:
    return FileResponse(PAGE_DIR / "index.html", media_type="text/html", headers=HEADERS)


@router.get("/playground/{name}", include_in_schema=False)
async def playground_asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(404, f"The playground has no file {name!r}.")
    return FileResponse(PAGE_DIR / name, media_type=media_type, headers=HEADERS)
