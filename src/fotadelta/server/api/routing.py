"""The REST layer's machinery: operations declared once, served by Starlette and described by OpenAPI.

An `Op` names its method, path, permission, parameters, body and response types; `routes` turns
the table into Starlette routes (authentication, bounded body reading, pydantic validation, the
service call in a worker thread of the app's, errors as JSON with the right status), and `document` turns the
same table into the OpenAPI 3.1 document. Handlers are thin: they call one service method."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic.json_schema import JsonSchemaMode
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fotadelta.errors import PackageError
from fotadelta.server.auth import PERMISSIONS, AuthError, Conflict, Forbidden, Permission, Principal, Role, Throttled
from fotadelta.server.fleet import Fleet
from fotadelta.server.api.schemas import Error

MAX_JSON = 1 << 20
MAX_UPLOAD = 16 << 20  # a package or a CSV file
BINARY = "application/octet-stream"
CSV = "text/csv"
SVG = "image/svg+xml"


@dataclass(frozen=True)
class Param:
    name: str
    where: str = "query"  # query | path
    kind: type = str  # str | int
    description: str = ""
    required: bool = False


@dataclass
class Call:
    """One request as a handler sees it."""

    actor: Principal
    path: dict[str, Any]
    query: dict[str, Any]
    body: Any
    peer: str = ""  # the caller's address


@dataclass(frozen=True)
class Op:
    method: str
    path: str
    id: str
    summary: str
    handler: Callable[[Fleet, Call], Any]
    permission: Permission | None  # what the service checks (documented here); None: no token needed
    params: tuple[Param, ...] = ()
    body: Any = None  # a type read through pydantic, or BINARY / CSV
    response: Any = None  # a type written through pydantic, CSV or SVG; None: 204
    status: int = 200
    tags: tuple[str, ...] = field(default=())


@functools.cache
def adapter(kind: Any) -> TypeAdapter[Any]:
    """One pydantic adapter per type for the process, made when first needed (they cost milliseconds
    each, seconds for all: a server does not pay for them at start-up)."""
    return TypeAdapter(kind)


class _Http(Exception):
    def __init__(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(text)
        self.status, self.text, self.headers = status, text, headers


def _error(status: int, text: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": " ".join(text.split())[:1000]}, status_code=status, headers=headers)


async def _read(request: Request, limit: int) -> bytes:
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise _Http(413, f"the request body is over {limit} bytes")
    return bytes(body)


# How a route calls a function off the event loop: (function, *args) -> its result.
Run = Callable[..., Awaitable[Any]]


def routes(fleet: Fleet, ops: list[Op], run: Run) -> list[Route]:
    by_path: dict[str, dict[str, Op]] = {}
    for op in ops:
        by_path.setdefault(op.path, {})[op.method] = op

    def endpoint(table: dict[str, Op]) -> Callable[[Request], Any]:
        async def serve(request: Request) -> Response:
            op = table[request.method if request.method != "HEAD" else "GET"]
            try:
                # (Only a token is looked up in the database: any other caller is known on the loop.)
                token = _bearer(request)
                actor = (_who(fleet, request, op, token) if token is None or op.permission is None
                         else await run(_who, fleet, request, op, token))
                path = {p.name: _convert(p, request.path_params.get(p.name)) for p in op.params if p.where == "path"}
                query = {p.name: _convert(p, request.query_params.get(p.name)) for p in op.params if p.where == "query"}
                body: Any = None
                if op.body in (BINARY, CSV):
                    raw = await _read(request, MAX_UPLOAD)
                    body = raw if op.body == BINARY else raw.decode("utf-8", "strict")
                elif op.body is not None:
                    body = adapter(op.body).validate_json(await _read(request, MAX_JSON) or b"{}")
                result = await run(op.handler, fleet, Call(actor, path, query, body, _peer(request)))
            except _Http as exc:
                return _error(exc.status, exc.text, exc.headers)
            except AuthError as exc:
                return _error(401, str(exc), {"www-authenticate": 'Bearer realm="fotadelta"'})
            except Throttled as exc:
                return _error(503 if exc.busy else 429, str(exc), {"retry-after": str(exc.retry_after)})
            except Forbidden as exc:
                return _error(403, str(exc))
            except LookupError as exc:
                return _error(404, str(exc).strip("'\""))
            except Conflict as exc:
                return _error(409, str(exc))
            except ValidationError as exc:
                first = exc.errors()[0]
                return _error(400, f"{'.'.join(str(x) for x in first['loc']) or 'body'}: {first['msg']}")
            except (ValueError, PackageError) as exc:  # (UnicodeDecodeError is a ValueError)
                return _error(400, str(exc))
            if op.response is None:
                return Response(status_code=204)
            if op.response == CSV:
                return Response(result, media_type="text/csv; charset=utf-8")
            if op.response == SVG:
                return Response(result, media_type=SVG)
            return JSONResponse(adapter(op.response).dump_python(result, mode="json"), status_code=op.status)
        return serve

    starlette_path = {p: p for p in by_path}
    return [Route(starlette_path[p], endpoint(table), methods=list(table)) for p, table in by_path.items()]


def _bearer(request: Request) -> str | None:
    """The request's bearer token, if it has one."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _who(fleet: Fleet, request: Request, op: Op, token: str | None) -> Principal:
    """The caller: its bearer token's principal, or (no token, on a server without an admin token) a
    program on the server's own host. A caller that does not authenticate is counted against the
    server's allowance for such requests, and refused with 429 once it is used up."""
    if op.permission is None:
        return Principal("anonymous", Role.READ_ONLY)
    try:
        if token is not None:
            return fleet.auth.authenticate(token)
        if _local_program(request) and (operator := fleet.auth.loopback_operator()) is not None:
            return operator
        raise AuthError("an API token is required (Authorization: Bearer <token>)")
    except AuthError:
        server, peer = fleet.server, _peer(request)
        if (refused := server.throttled(peer)) is not None:
            raise _Http(refused.status, refused.body.decode().strip(), refused.headers) from None
        server.throttle.failed(peer)
        raise


def _peer(request: Request) -> str:
    return request.client.host if request.client is not None else ""


def _local_program(request: Request) -> bool:
    """A request from the server's loopback that no browser sent: browsers add Origin to cross-site and
    POST requests and Sec-Fetch-* to all of theirs, so a page cannot borrow a local caller's trust."""
    return _peer(request) in ("127.0.0.1", "::1") and not any(
        name == "origin" or name.startswith("sec-fetch-") for name in request.headers.keys())


def _convert(p: Param, raw: str | None) -> Any:
    if raw is None or raw == "":
        if p.required:
            raise _Http(400, f"{p.name} is required")
        return None
    if p.kind is int:
        try:
            return int(raw)
        except ValueError:
            raise _Http(404 if p.where == "path" else 400, f"{p.name} is a number") from None
    if p.kind is bool:
        return raw.lower() in ("1", "true", "yes")
    if len(raw) > 256:
        raise _Http(400, f"{p.name} is at most 256 characters")
    return raw


# -- the OpenAPI document ----------------------------------------------------------------------------

_TYPES = {str: "string", int: "integer", bool: "boolean"}


def document(ops: list[Op], version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ops."""
    inputs: list[tuple[str, JsonSchemaMode, TypeAdapter[Any]]] = [("Error", "serialization", adapter(Error))]
    for op in ops:
        if op.body not in (None, BINARY, CSV):
            inputs.append((op.id, "validation", adapter(op.body)))
        if op.response not in (None, CSV, SVG):
            inputs.append((op.id, "serialization", adapter(op.response)))
    refs, defs = TypeAdapter.json_schemas(inputs, ref_template="#/components/schemas/{model}")
    error = {"description": "error", "content": {"application/json": {"schema": refs[("Error", "serialization")]}}}
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        entry: dict[str, Any] = {"operationId": op.id, "summary": op.summary, "tags": list(op.tags)}
        if op.permission is None:
            entry["security"] = []
        else:
            roles = [r.value for r in Role if op.permission in PERMISSIONS[r]]
            entry["description"] = f"Needs the {op.permission.value} permission (roles: {', '.join(roles)})."
        entry["parameters"] = [{"name": p.name, "in": p.where, "required": p.where == "path" or p.required,
                                "description": p.description or p.name, "schema": {"type": _TYPES[p.kind]}}
                               for p in op.params]
        if op.body == BINARY:
            entry["requestBody"] = {"required": True, "content": {BINARY: {"schema": {"type": "string",
                                                                                     "format": "binary"}}}}
        elif op.body == CSV:
            entry["requestBody"] = {"required": True, "content": {CSV: {"schema": {"type": "string"}}}}
        elif op.body is not None:
            entry["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": refs[(op.id, "validation")]}}}
        responses: dict[str, Any] = {}
        if op.response is None:
            responses["204"] = {"description": "done"}
        elif op.response in (CSV, SVG):
            responses[str(op.status)] = {"description": "ok", "content": {op.response: {"schema": {"type": "string"}}}}
        else:
            responses[str(op.status)] = {"description": "ok", "content": {"application/json": {
                "schema": refs[(op.id, "serialization")]}}}
        refusals = ("400", "401", "403", "404", "409", "429") if op.permission is not None else ("400", "401", "429")
        for code in refusals:
            responses[code] = error
        entry["responses"] = responses
        paths.setdefault(op.path, {})[op.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": "fotadelta fleet API", "version": version,
                 "description": "Devices, releases, jobs, DM commands, campaigns, reports, users and tokens. "
                                "Every call but the token login takes `Authorization: Bearer <token>` (a server "
                                "without an admin token also takes programs on its own host without one)."},
        "paths": paths,
        "components": {"schemas": defs.get("$defs", {}),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
    }
