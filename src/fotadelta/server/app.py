"""The DM server's HTTP face (Starlette): the DM endpoint, package downloads, the web portal, and
the operator API and web console.

- `POST /dm` (or each path of `ServerConfig.dm_paths`): one SyncML DM message in, the next one out (XML or
  WBXML). Sessions start there; each goes on at its RespURI, `POST <that path>/{token}`.
- `GET|HEAD /packages/{id}`: the package (from memory, server/downloads.py), with Content-Length and Range
  support, so devices can resume an interrupted download.
- `GET /portal/{dev_id}`: the downloads compatible with a device; selecting one answers with a
  DM trigger (`application/vnd.syncml.notification`: a package #0 carrying a one-time selection
  token) that makes the device's DM client open the session that redeems it; nothing is planned
  before the device's own authenticated session does.
- `GET /healthz`: 200 when this process can reach its database, 503 when it cannot (for load balancers
  and process supervisors; unauthenticated, it reads nothing and writes nothing).
- `/api/v1/...` and `/openapi.json`: the operator API (server/api/: devices, releases, jobs,
  commands, campaigns, reports, users), behind roles; `/console/...`: the web console
  (server/console/).

`serve --workers N` runs N processes on one port (uvicorn's process manager): each makes its app with
`worker_app`, from the configuration the supervising process hands over in WORKER_CONFIG_ENV. Any
worker serves any message of any session: nothing of a session is kept in a process (engine.py). Each
DM answer names the process that made it in `x-fotadelta-instance` (a random id per process), for
operators (and tests) following a session across processes and hosts."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import html
import json
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.supervisors import Multiprocess

from fotadelta.dm import notification
from fotadelta.server.api import api_routes
from fotadelta.server.console import console_routes
from fotadelta.server.downloads import PackageCache, package_response
from fotadelta.server.engine import DmServer, HttpReply, Inbound, ServerConfig
from fotadelta.server.fleet import Fleet
from fotadelta.server.limits import Limits
from fotadelta.server.push import HttpPush, PushPolicy

# Requests a server process runs at once, in each of its thread pools (the rest wait in the event loop): the
# devices' (DM messages, package reads: the load), the operator API's (both handed over through asyncio's
# executor, which costs half what anyio's worker threads do per call) and the rest's (the console, the portal,
# through Starlette's run_in_threadpool); no kind of caller can starve another. More threads only contend for
# the GIL and the database: fewer, busier threads make each message cheaper (4 against 8: 4-6 % less CPU per
# update for server and PostgreSQL together, and more updates/s, at 16 to 256 devices; benchmarks/README.md).
# (Store's connection pool holds at least as many connections as all three pools have threads.)
REQUEST_THREADS = 4
WORKER_CONFIG_ENV = "FOTADELTA_WORKER_CONFIG"  # the ServerConfig of `serve --workers N`, as JSON
INSTANCE_HEADER = "x-fotadelta-instance"
INSTANCE = secrets.token_hex(4)  # this process, in its DM answers
T = TypeVar("T")


def _peer(request: Request) -> str:
    return request.client.host if request.client is not None else ""


def _response(reply: HttpReply) -> Response:
    return Response(reply.body, status_code=reply.status, media_type=reply.content_type, headers=reply.headers)


_DM_HEADERS = (b"content-type", b"x-syncml-hmac")  # what the DM endpoint reads of a request's headers


class _DmEndpoint:
    """The endpoint for one DM path and the sessions below it: plain ASGI (the devices' messages are the load;
    Starlette's Request and Response would cost each more than it needs). run: how the engine is called off
    the event loop."""

    def __init__(self, server: DmServer, path: str, run: Callable[[Callable[[Inbound], HttpReply], Inbound],
                                                                   Awaitable[HttpReply]]) -> None:
        self.server, self.path, self.run = server, path, run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """As a Starlette route's endpoint (the session token, if any, in the route's path parameters)."""
        await self.serve(scope, receive, send, scope["path_params"].get("token"))

    async def serve(self, scope: Scope, receive: Receive, send: Send, token: str | None) -> None:
        server = self.server
        peer = scope["client"][0] if scope.get("client") else ""
        if (throttled := server.throttled(peer, token)) is not None:
            # (before the body is read: a throttled caller costs no more than this)
            return await _send(send, throttled)
        limit = server.config.max_msg_size
        # Counted as it arrives (Content-Length may be absent or lie): a huge body is never held whole.
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # (the device is gone: nothing to answer)
            body += message.get("body", b"")
            if len(body) > limit:
                server.throttle.failed(peer)
                server.refusals.note("message size", peer, f"a body over {limit} bytes")
                return await _send(send, HttpReply(413, "text/plain",
                                                   f"message too large (over {limit} bytes)\n".encode()))
            if not message.get("more_body", False):
                break
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            if name in _DM_HEADERS:
                headers.setdefault(name, value)  # (the first, as Starlette's Headers.get)
        content_type, hmac = headers.get(b"content-type"), headers.get(b"x-syncml-hmac")
        inbound = Inbound(bytes(body), None if content_type is None else content_type.decode("latin-1"),
                          None if hmac is None else hmac.decode("latin-1"), token, peer, self.path)
        await _send(send, await self.run(server.handle, inbound), instance=True)


class _Downloads:
    """`GET|HEAD /packages/{id}`: plain ASGI, as the DM endpoint (the bytes from memory, a file read the
    first time through run)."""

    def __init__(self, server: DmServer, run: Callable[..., Awaitable[bytes | None]]) -> None:
        self.server, self.run, self.packages = server, run, PackageCache()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """As a Starlette route's endpoint (the package's id in the route's path parameters)."""
        await self.serve(scope, receive, send, scope["path_params"]["id"])

    async def serve(self, scope: Scope, _receive: Receive, send: Send, package_id: int) -> None:
        data = self.packages.get(package_id)
        if data is None:
            data = await self.run(_read_package, self.server, self.packages, package_id)
            if data is None:
                return await _send(send, HttpReply(404, "text/plain", b"no such package\n"))
        range_header = next((v for k, v in scope["headers"] if k == b"range"), None)
        await _send(send, package_response(data, scope["method"],
                                           None if range_header is None else range_header.decode("latin-1")))


async def _send(send: Send, reply: HttpReply, *, instance: bool = False) -> None:
    """reply as the answer to an ASGI request (with instance: naming this process in INSTANCE_HEADER). Its
    content-length is its body's unless its headers give one (a HEAD's)."""
    content_type = reply.content_type
    if content_type.startswith("text/") and "charset=" not in content_type:
        content_type += "; charset=utf-8"  # (as Starlette's responses, which the rest of the app answers with)
    headers = [(b"content-type", content_type.encode("latin-1")),
               *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers.items())]
    if "content-length" not in reply.headers:
        headers.append((b"content-length", str(len(reply.body)).encode("latin-1")))
    if instance:
        headers.append((INSTANCE_HEADER.encode("latin-1"), INSTANCE.encode("latin-1")))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})


class _App(Starlette):
    """The Starlette application with the devices' requests taken before its middleware and router: a DM
    message (POST to a DM path or a session's RespURI) and a package download (GET or HEAD). They are the
    load, and need nothing of what the router and middleware do for the rest; any other request, and any
    of these under a root path, goes the ordinary way (the same endpoints are routes there too, so a wrong
    method still gets its 405)."""

    def __init__(self, dm: dict[str, _DmEndpoint], downloads: _Downloads, **starlette: Any) -> None:
        """dm: the DM endpoints by their path."""
        super().__init__(**starlette)
        self._dm, self._downloads = dm, downloads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            path, method = scope["path"], scope["method"]
            if method == "POST":
                if (endpoint := self._dm.get(path)) is not None:
                    return await endpoint.serve(scope, receive, send, None)
                above, _, token = path.rpartition("/")
                if token and (endpoint := self._dm.get(above)) is not None:
                    return await endpoint.serve(scope, receive, send, token)
            elif method in ("GET", "HEAD") and path.startswith(_PACKAGES):
                number = path[len(_PACKAGES):]
                if number.isascii() and number.isdigit():  # (the route's {id:int})
                    return await self._downloads.serve(scope, receive, send, int(number))
        await super().__call__(scope, receive, send)


_PACKAGES = "/packages/"


class _Health:
    """`GET /healthz`: whether this process reaches its database. The answer is kept for HEALTH_TTL
    seconds, so a flood of probes costs the database at most one `SELECT 1` a second per process."""

    HEALTH_TTL = 1.0

    def __init__(self, server: DmServer) -> None:
        self.server, self.checked_at, self.healthy = server, float("-inf"), False

    async def answer(self, _request: Request) -> Response:
        if time.monotonic() - self.checked_at >= self.HEALTH_TTL:
            self.healthy = await run_in_threadpool(self.server.store.reachable)
            self.checked_at = time.monotonic()
        if self.healthy:
            return PlainTextResponse("ok\n", headers={"cache-control": "no-store"})
        return PlainTextResponse("database unavailable\n", status_code=503, headers={"cache-control": "no-store"})


def create_app(server: DmServer, services: Fleet | None = None) -> Starlette:
    """The server's HTTP application; services: its fleet services (default: new ones on server)."""
    services = services or Fleet(server)
    devices_pool = ThreadPoolExecutor(REQUEST_THREADS, thread_name_prefix="fotadelta-dm")
    api_pool = ThreadPoolExecutor(REQUEST_THREADS, thread_name_prefix="fotadelta-api")

    async def on_devices_pool(fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(devices_pool, fn, *args)

    async def on_api_pool(fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(api_pool, fn, *args)


    def portal_caller(request: Request) -> Response | None:
        """The portal authenticates nobody: every request counts against its caller's allowance."""
        peer = _peer(request)
        if (throttled := server.throttled(peer)) is not None:
            return _response(throttled)
        server.throttle.failed(peer)
        return None

    async def portal(request: Request) -> Response:
        if (refused := portal_caller(request)) is not None:
            return refused
        dev_id = request.path_params["dev_id"]
        offers = await run_in_threadpool(server.offers, dev_id)
        rows = "".join(f'<li><a href="/portal/{html.escape(dev_id)}/select?version={html.escape(v)}">'
                       f"version {html.escape(v)}</a> ({size} bytes to download)</li>" for v, size in offers)
        body = f"<h1>Downloads for {html.escape(dev_id)}</h1><ul>{rows or '<li>none</li>'}</ul>"
        return HTMLResponse(f"<!doctype html><title>fotadelta</title>{body}")

    async def select(request: Request) -> Response:
        if (refused := portal_caller(request)) is not None:
            return refused
        dev_id, version = request.path_params["dev_id"], request.query_params.get("version", "")
        try:
            pkg0 = await run_in_threadpool(server.portal_trigger, dev_id, version)
        except (LookupError, ValueError) as exc:
            return PlainTextResponse(f"{exc}\n", status_code=404)
        return Response(pkg0, media_type=notification.CONTENT_TYPE)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = REQUEST_THREADS
        try:
            yield
        finally:
            devices_pool.shutdown(wait=False)
            api_pool.shutdown(wait=False)

    dm = {path: _DmEndpoint(server, path, on_devices_pool) for path in server.config.dm_paths}
    downloads = _Downloads(server, on_devices_pool)
    return _App(dm, downloads, lifespan=lifespan, routes=[
        # (What _App takes before the router is here too, for what it leaves to the router. Every DM path
        # before any session's: a path may lie below another, e.g. /dm and /dm/oma.)
        *[Route(path, endpoint, methods=["POST"]) for path, endpoint in dm.items()],
        *[Route(f"{path}/{{token}}", endpoint, methods=["POST"]) for path, endpoint in dm.items()],
        Route("/packages/{id:int}", downloads, methods=["GET", "HEAD"]),
        Route("/healthz", _Health(server).answer, methods=["GET"]),
        Route("/portal/{dev_id}", portal),
        Route("/portal/{dev_id}/select", select),
        *api_routes(services, on_api_pool),
        *console_routes(services),
    ])


def _read_package(server: DmServer, packages: PackageCache, package_id: int) -> bytes | None:
    """A package's bytes (kept in packages), None if there is no such package."""
    path = server.package_path(package_id)
    if path is None:
        return None
    try:
        return packages.load(package_id, path)
    except FileNotFoundError:
        return None


def config_to_json(config: ServerConfig) -> str:
    """A ServerConfig as JSON, for worker processes (config_from_json reads it)."""
    fields: dict[str, Any] = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    fields["data_dir"] = str(config.data_dir)
    fields["limits"] = dataclasses.asdict(config.limits)
    fields["push_policy"] = dataclasses.asdict(config.push_policy)
    return json.dumps(fields)


def config_from_json(text: str) -> ServerConfig:
    fields = json.loads(text)
    fields["data_dir"] = Path(fields["data_dir"])
    fields["dm_paths"] = tuple(fields["dm_paths"])
    fields["limits"] = Limits(**fields["limits"])
    policy: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in fields["push_policy"].items()}
    fields["push_policy"] = PushPolicy(**policy)
    return ServerConfig(**fields)


def worker_app() -> Starlette:
    """The app of one `serve --workers N` process (uvicorn's factory): the store opened in this process,
    its fleet services without the scheduler (the supervising process runs that, once)."""
    config = config_from_json(os.environ[WORKER_CONFIG_ENV])
    server = DmServer(config, push=HttpPush(policy=config.push_policy), upkeep=False)
    app = create_app(server, Fleet(server))
    tune_gc()
    return app


class Workers(Multiprocess):
    """uvicorn's process manager for `serve --workers N`, which replaces a dead worker on its next round of checks.

    The manager checks its workers in turn over a pipe each (ping, then wait for the pong up to
    timeout_worker_healthcheck). It keeps its own copy of the worker's end of that pipe, so a worker that
    dies while its ping is outstanding closes nothing the manager sees: the wait runs out its whole
    timeout before the worker is replaced, and meanwhile no other worker is checked or replaced either."""

    def keep_subprocess_alive(self) -> None:
        # Every worker listed here has been started and holds its own copy of its end: without the manager's,
        # a worker's death reads as end-of-file on the manager's end, which ends a ping at once.
        for worker in self.processes:
            worker.child_conn.close()
        super().keep_subprocess_alive()


# A server process allocates many short-lived objects per message (rows, elements, the model): collecting the
# youngest generation every 700 allocations promotes those of the requests in flight, and every full
# collection walks the modules, classes and caches loaded at start-up, which live as long as the process.
GC_THRESHOLDS = (20_000, 20, 100)


def tune_gc() -> None:
    """Once a server process has made its app: what exists now is kept out of the collector's walks for good
    (gc.freeze), and young collections run less often (GC_THRESHOLDS)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class Running:
    """A uvicorn server running in a background thread."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, port: int) -> None:
        self.server, self.thread, self.port = server, thread, port

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def serve_in_thread(app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> Running:
    """Start app on host:port (0: any free port) and return once it accepts connections."""
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True, name=f"uvicorn:{port}")
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the HTTP server on {host}:{port} did not start")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    return Running(server, thread, bound)


__all__ = ["INSTANCE_HEADER", "WORKER_CONFIG_ENV", "Running", "config_from_json", "config_to_json", "create_app", "serve_in_thread",
           "tune_gc", "Workers", "worker_app"]
