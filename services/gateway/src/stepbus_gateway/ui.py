"""The live task timeline: a static page under ``/ui/`` built on the public HTTP API.

The page holds no server logic: it calls ``/v1/...`` with the API key the viewer types in,
like any other client. ``/ui/config.json`` tells it where traces can be looked up.
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

__all__ = ["UI_DIRECTORY", "ui_routes"]

UI_DIRECTORY = Path(__file__).with_name("ui")
"""The page's static files (shipped in the wheel with the package)."""


async def _config(request: Request) -> Response:
    """What the page cannot know by itself: ``trace_url_template`` (``{trace_id}`` is replaced
    by a trace id), from ``STEPBUS_TRACE_URL_TEMPLATE``; null links no traces."""
    template = os.environ.get("STEPBUS_TRACE_URL_TEMPLATE")
    return JSONResponse({"trace_url_template": template}, headers={"Cache-Control": "no-cache"})


async def _to_slash(request: Request) -> Response:
    return RedirectResponse("/ui/", status_code=308)


def ui_routes() -> list[BaseRoute]:
    """``/ui`` (redirects to ``/ui/``), ``/ui/config.json`` and the static page under ``/ui/``."""
    return [
        Route("/ui", _to_slash, methods=["GET", "HEAD"]),
        Route("/ui/config.json", _config, methods=["GET"]),
        Mount("/ui", app=StaticFiles(directory=UI_DIRECTORY, html=True), name="ui"),
    ]
