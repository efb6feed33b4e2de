"""The REST API over the fleet services (`/api/v1/...`) and its OpenAPI document (`/openapi.json`).

A thin adapter: `operations.py` lists the operations, each calling one service method of
`fotadelta.server.fleet.Fleet`; `routing.py` serves the list with Starlette and describes it as
OpenAPI 3.1; `schemas.py` holds the request and response bodies the services do not define."""

from __future__ import annotations

import functools
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import fotadelta
from fotadelta.server.api.operations import operations
from fotadelta.server.api.routing import Run, document, routes
from fotadelta.server.fleet import Fleet


@functools.cache
def _document() -> str:
    return json.dumps(document(operations(), fotadelta.__version__))


def openapi() -> dict[str, Any]:
    """The OpenAPI document of the fleet API (made once per process)."""
    result: dict[str, Any] = json.loads(_document())
    return result


def api_routes(fleet: Fleet, run: Run) -> list[Route]:
    """Routes for the API and /openapi.json; run: how they call the fleet services off the event loop."""
    async def serve_spec(request: Request) -> Response:
        return Response(_document(), media_type="application/json")

    return [*routes(fleet, operations(), run), Route("/openapi.json", serve_spec)]


__all__ = ["api_routes", "openapi"]
