"""Routes for the demo page, the dashboard and their static assets (plain HTML, CSS and JS).

The files ship inside the package (``liverec/ui/static``), so the pages work offline and from an
installed wheel. Assets are served only by name from that folder: no path leaves it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import PurePosixPath

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

from ..api.auth import public

router = APIRouter(include_in_schema=False)

STATIC = resources.files("liverec.ui") / "static"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}


def _asset(name: str) -> Response:
    """The static file ``name`` (a relative path inside the static folder) as a response."""
    parts = PurePosixPath(name).parts
    suffix = PurePosixPath(name).suffix
    if not parts or any(p in ("..", ".") or p.startswith(".") for p in parts) or suffix not in MEDIA_TYPES:
        raise HTTPException(404, detail=f"no asset {name!r}")
    resource = STATIC.joinpath(*parts)
    if not resource.is_file():
        raise HTTPException(404, detail=f"no asset {name!r}")
    # no-cache: the browser revalidates, so a new version of the page is picked up at once.
    return Response(resource.read_bytes(), media_type=MEDIA_TYPES[suffix], headers={"Cache-Control": "no-cache"})


@router.get("/")
@public
def demo_page() -> Response:
    """The demo page: recommendations for a user that react to every click."""
    return _asset("index.html")


@router.get("/dashboard")
@public
def dashboard_page() -> Response:
    """The operations dashboard: live figures and sparklines."""
    return _asset("dashboard.html")


@router.get("/ui/static/{name:path}")
@public
def static_asset(name: str) -> Response:
    return _asset(name)
