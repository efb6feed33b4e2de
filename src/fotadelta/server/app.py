"""The DM server's HTTP face (Starlette): the DM endpoint, package downloads, the web portal.

- `POST /dm` (or each path of `ServerConfig.dm_paths`): one SyncML DM message in, the next one out (XML or
  WBXML). Sessions start there; each goes on at its RespURI, `POST <that path>/{token}`.
- `GET|HEAD /packages/{id}`: the package, with Content-Length and Range support, so devices can
  resume an interrupted download.
- `GET /portal/{dev_id}`: the downloads compatible with a device; selecting one answers with a
  DM trigger (`application/vnd.syncml.notification`: a package #0 carrying a one-time selection
  token) that makes the device's DM client open the session that redeems it; nothing is planned
  before the device's own authenticated session does.
- `GET /api/devices` and `GET /api/jobs[?device=DevId]` (read-only): the fleet and its jobs as the
  `fotadelta fleet` and `fotadelta jobs` commands show them, results in words.
- `GET /api/fleet` (devices, jobs and sessions as JSON, without secrets), `POST /api/packages` (a
  signed package as the body) and `POST /api/devices/{dev_id}/update` (`{"version": V, "notify":
  true, "delivery": "download"|"inline"}`): the operator's API. It takes `Authorization: Bearer
  <admin token>` when the server has one, else loopback callers only.
- `GET|POST /api/accounts`, `GET|DELETE /api/accounts/{dev_id}`: device accounts (credentials per direction,
  first nonce, SNMP credentials); secrets go in, never out. Same authorisation.
- `GET /api/capabilities`, `PUT|DELETE /api/capabilities/{make}/{model}[?fw_version=V]`: what kinds of device
  can take, as discovered and as the operator overrides it. Same authorisation."""

from __future__ import annotations

import html
import secrets
import threading
import time
from collections.abc import Awaitable, Callable

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from fotadelta.dm import notification
from fotadelta.errors import PackageError
from fotadelta.server.accounts import Account, AccountError
from fotadelta.server.capabilities import DeviceCapability
from fotadelta.server.engine import DmServer, HttpReply, Inbound
from fotadelta.server.push import PushError

# Fields of the fleet snapshot that are credentials: never shown, not even to the operator.
_SECRET_FIELDS = ("password", "server_password", "client_nonce", "server_nonce", "snmp")


def _peer(request: Request) -> str:
    return request.client.host if request.client is not None else ""


def _response(reply: HttpReply) -> Response:
    return Response(reply.body, status_code=reply.status, media_type=reply.content_type, headers=reply.headers)


def create_app(server: DmServer) -> Starlette:
    def dm_at(path: str) -> Callable[[Request], Awaitable[Response]]:
        """The endpoint for one DM path and the sessions below it."""
        async def dm(request: Request) -> Response:
            peer = _peer(request)
            if (throttled := server.throttled(peer, request.path_params.get("token"))) is not None:
                return _response(throttled)  # (before the body is read: a throttled caller costs no more than this)
            limit = server.config.max_msg_size
            # Counted as it arrives (Content-Length may be absent or lie): a huge body is never held whole.
            body = bytearray()
            async for piece in request.stream():
                body += piece
                if len(body) > limit:
                    server.throttle.failed(peer)
                    server.refusals.note("message size", peer, f"a body over {limit} bytes")
                    return PlainTextResponse(f"message too large (over {limit} bytes)\n", status_code=413)
            inbound = Inbound(bytes(body), request.headers.get("content-type"), request.headers.get("x-syncml-hmac"),
                              request.path_params.get("token"), peer, path)
            return _response(await run_in_threadpool(server.handle, inbound))
        return dm

    async def download(request: Request) -> Response:
        path = await run_in_threadpool(server.package_path, int(request.path_params["id"]))
        if path is None or not path.exists():
            return PlainTextResponse("no such package\n", status_code=404)
        return FileResponse(path, media_type="application/vnd.fotadelta.package")

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

    def admin(request: Request) -> Response | None:
        token = server.config.admin_token
        if token is not None:
            if not secrets.compare_digest(request.headers.get("authorization", ""), f"Bearer {token}"):
                return PlainTextResponse("admin token required\n", status_code=401)
        elif request.client is None or request.client.host not in ("127.0.0.1", "::1"):
            return PlainTextResponse("the admin API takes loopback callers only (or set an admin token)\n",
                                     status_code=403)
        return None

    async def publish(request: Request) -> Response:
        if (refused := admin(request)) is not None:
            return refused
        try:
            row = await run_in_threadpool(server.publish, await request.body())
        except PackageError as exc:
            return PlainTextResponse(f"{exc}\n", status_code=400)
        return JSONResponse({"id": row.id, "name": row.name, "size": row.size}, status_code=201)

    async def update(request: Request) -> Response:
        if (refused := admin(request)) is not None:
            return refused
        dev_id = request.path_params["dev_id"]
        try:
            spec = await request.json()
            version, notify = str(spec["version"]), bool(spec.get("notify", True))
            delivery = str(spec.get("delivery", "download"))
        except (ValueError, KeyError, TypeError):
            return PlainTextResponse('expected JSON {"version": ..., "notify": true}\n', status_code=400)
        if delivery not in ("download", "inline"):
            return PlainTextResponse("delivery is download or inline\n", status_code=400)
        try:
            job = await run_in_threadpool(lambda: server.assign(dev_id, version, delivery=delivery))
            if notify:
                await run_in_threadpool(server.notify, dev_id)
        except (LookupError, ValueError, PushError) as exc:
            return PlainTextResponse(f"{exc}\n", status_code=404 if isinstance(exc, LookupError) else 409)
        return JSONResponse({"job": job.id, "correlator": job.correlator, "notified": notify}, status_code=201)

    async def devices(request: Request) -> Response:
        if (refused := admin(request)) is not None:
            return refused
        return JSONResponse({"devices": await run_in_threadpool(server.device_list)})

    async def jobs(request: Request) -> Response:
        if (refused := admin(request)) is not None:
            return refused
        return JSONResponse({"jobs": await run_in_threadpool(server.job_list, request.query_params.get("device"))})

    async def fleet(request: Request) -> Response:
        if (refused := admin(request)) is not None:
            return refused
        snap = await run_in_threadpool(server.store.snapshot)

        def rows(items: list[object]) -> list[dict[str, object]]:
            return [{k: v for k, v in vars(r).items() if not k.startswith("_") and k not in _SECRET_FIELDS}
                    for r in items]
        return JSONResponse({"devices": rows(list(snap.devices)), "jobs": rows(list(snap.jobs)),
                             "sessions": rows(list(snap.sessions))})

    async def account_list(request: Request) -> Response:
        if (refused := admin(request)) is not None:
            return refused
        if request.method == "GET":
            return JSONResponse({"accounts": await run_in_threadpool(server.account_list)})
        try:
            account = Account.from_json(await request.json())
            new = await run_in_threadpool(server.put_account, account)
        except (ValueError, AccountError) as exc:  # (a body that is not JSON is a ValueError too)
            return PlainTextResponse(f"{exc}\n", status_code=400)
        return JSONResponse({"dev_id": account.dev_id, "created": new}, status_code=201 if new else 200)

    async def account_one(request: Request) -> Response:
        if (refused := admin(request)) is not None:
            return refused
        dev_id = request.path_params["dev_id"]
        if request.method == "DELETE":
            gone = await run_in_threadpool(server.remove_account, dev_id)
            return JSONResponse({"dev_id": dev_id, "removed": gone}, status_code=200 if gone else 404)
        found = await run_in_threadpool(server.account, dev_id)
        if found is None:
            return PlainTextResponse(f"no account {dev_id}\n", status_code=404)
        return JSONResponse(found)

    async def capability_list(request: Request) -> Response:
        if (refused := admin(request)) is not None:
            return refused
        return JSONResponse({"capabilities": await run_in_threadpool(server.capabilities)})

    async def capability_one(request: Request) -> Response:
        if (refused := admin(request)) is not None:
            return refused
        make, model = request.path_params["make"], request.path_params["model"]
        version = request.query_params.get("fw_version", "")
        if max(len(make), len(model), len(version)) > 64:
            return PlainTextResponse("make, model and fw_version are at most 64 characters\n", status_code=400)
        if request.method == "DELETE":
            await run_in_threadpool(server.set_capability, make, model, version, None)
            return JSONResponse({"make": make, "model": model, "fw_version": version, "removed": True})
        try:
            cap = DeviceCapability.from_known(await request.json())
        except ValueError as exc:
            return PlainTextResponse(f"{exc}\n", status_code=400)
        await run_in_threadpool(server.set_capability, make, model, version, cap)
        in_force = await run_in_threadpool(server.capability, make, model, version)
        return JSONResponse({"make": make, "model": model, "fw_version": version, "in_force": in_force.known()})

    paths = server.config.dm_paths
    return Starlette(routes=[
        # (Every DM path before any session's: a path may lie below another, e.g. /dm and /dm/oma.)
        *[Route(path, dm_at(path), methods=["POST"]) for path in paths],
        *[Route(f"{path}/{{token}}", dm_at(path), methods=["POST"]) for path in paths],
        Route("/packages/{id:int}", download, methods=["GET", "HEAD"]),
        Route("/portal/{dev_id}", portal),
        Route("/portal/{dev_id}/select", select),
        Route("/api/fleet", fleet),
        Route("/api/devices", devices),
        Route("/api/jobs", jobs),
        Route("/api/packages", publish, methods=["POST"]),
        Route("/api/devices/{dev_id}/update", update, methods=["POST"]),
        Route("/api/accounts", account_list, methods=["GET", "POST"]),
        Route("/api/accounts/{dev_id}", account_one, methods=["GET", "DELETE"]),
        Route("/api/capabilities", capability_list, methods=["GET"]),
        Route("/api/capabilities/{make}/{model}", capability_one, methods=["PUT", "DELETE"]),
    ])


class Running:
    """A uvicorn server running in a background thread."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, port: int) -> None:
        self.server, self.thread, self.port = server, thread, port

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def serve_in_thread(app: Starlette, host: str = "127.0.0.1", port: int = 0) -> Running:
    """Start app on host:port (0: any free port) and return once it accepts connections."""
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off", access_log=False)
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


__all__ = ["create_app", "serve_in_thread", "Running"]
