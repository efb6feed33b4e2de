"""The console's request handling: who is logged in, the CSRF check on every form, bounded form
reading, errors as pages, security headers, and rendering with Jinja2.

A page handler is a plain function `handler(ctx) -> Response` run in a worker thread; `Console.page`
wraps it. Permissions are the services' business: a handler calls the service with `ctx.me`, and a
`Forbidden` from it becomes a 403 page (the service has written the audit entry). Templates only
use `can(...)` to leave out what the user may not do."""

from __future__ import annotations

import secrets
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jinja2
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import Message

from fotadelta.errors import PackageError
from fotadelta.server.auth import AuthError, Conflict, Forbidden, Permission, Principal
from fotadelta.server.console.sessions import Login, Sessions
from fotadelta.server.fleet import Fleet

PREFIX = "/console"
# The __Host- prefix makes the browser insist on Secure, Path=/ and no Domain attribute.
SESSION_COOKIE = "__Host-fd_console"
LOGIN_COOKIE = "__Host-fd_login"  # the login form's CSRF token (double submit: no row before the login)
MAX_FORM = 64 * 1024
MAX_UPLOAD = 16 << 20  # a package or a CSV file
HEADERS = {
    # No inline script or style anywhere: the console's own files only.
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
LOOPBACK = ("127.0.0.1", "::1", "localhost")

Handler = Callable[["Ctx"], Response]


class HttpError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text


def when(ts: float | None) -> str:
    """A time stamp as operators read it (UTC)."""
    if not ts:
        return "never"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def link(path: str, **query: Any) -> str:
    """A console URL with the non-empty query values."""
    kept = {k: v for k, v in query.items() if v not in (None, "")}
    return f"{PREFIX}{path}" + (f"?{urllib.parse.urlencode(kept)}" if kept else "")


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("fotadelta.server.console", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["when"] = when
    env.globals["link"] = link
    env.globals["P"] = Permission
    return env


@dataclass
class Ctx:
    """One request as a page handler sees it."""

    console: Console
    request: Request
    login: Login
    form: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def fleet(self) -> Fleet:
        return self.console.fleet

    @property
    def me(self) -> Principal:
        return self.login.principal

    def arg(self, name: str, default: str = "") -> str:
        """A query parameter, bounded."""
        value = self.request.query_params.get(name, default)
        if len(value) > 256:
            raise HttpError(400, f"{name} is at most 256 characters")
        return value.strip()

    def int_arg(self, name: str) -> int | None:
        value = self.arg(name)
        try:
            return int(value) if value else None
        except ValueError:
            raise HttpError(400, f"{name} is a number") from None

    def field(self, name: str, default: str = "") -> str:
        return self.form.get(name, default).strip()

    def flash(self, text: str, kind: str = "ok") -> None:
        self.console.sessions.flash(self.login, kind, text)

    def render(self, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        return self.console.render(template, status, me=self.me, csrf=self.login.csrf,
                                   flashes=self.console.sessions.take_flash(self.login), path=self.request.url.path,
                                   **values)

    def fragment(self, template: str, **values: Any) -> HTMLResponse:
        """A piece of a page for the polling script: no layout, no flash messages taken."""
        return self.console.render(template, 200, me=self.me, csrf=self.login.csrf, **values)

    def done(self, to: str, text: str = "") -> RedirectResponse:
        """After an action: a message for the next page, and a 303 to it."""
        if text:
            self.flash(text)
        return RedirectResponse(to, status_code=303)


class Console:
    """The console's shared parts: the fleet services, sessions, templates."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.sessions = Sessions(fleet.server.store)
        self.env = environment()

    def render(self, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        response = HTMLResponse(self.env.get_template(template).render(**values), status_code=status)
        response.headers.update(HEADERS)
        return response

    def error(self, status: int, text: str, me: Principal | None = None) -> HTMLResponse:
        return self.render("error.html", status, code=status, text=text, me=me, csrf="", flashes=[], path="")

    def page(self, handler: Handler, *, upload: bool = False) -> Callable[[Request], Awaitable[Response]]:
        """An endpoint for handler: a logged-in user, and for a POST a same-origin form with the session's
        CSRF token. upload: the form may carry a file of up to MAX_UPLOAD bytes."""
        async def endpoint(request: Request) -> Response:
            login = await run_in_threadpool(self.sessions.find, request.cookies.get(SESSION_COOKIE, ""))
            if login is None:
                if request.method != "GET":
                    return self.error(401, "Your session has ended: log in again.")
                return RedirectResponse(link("/login", next=request.url.path), status_code=303)
            ctx = Ctx(self, request, login)
            try:
                if request.method == "POST":
                    check_origin(request)
                    ctx.form, ctx.files = await read_form(request, MAX_UPLOAD if upload else MAX_FORM)
                    if not secrets.compare_digest(ctx.form.get("csrf", "").encode(), login.csrf.encode()):
                        raise HttpError(403, "The form is out of date (CSRF check): reload the page and try again.")
                return await run_in_threadpool(handler, ctx)
            except HttpError as exc:
                return self.error(exc.status, exc.text, login.principal)
            except Forbidden as exc:
                return self.error(403, f"Not allowed: {exc}.", login.principal)
            except AuthError as exc:
                return self.error(401, str(exc), login.principal)
            except (LookupError, Conflict, ValueError, ValidationError, PackageError) as exc:
                text = _message(exc)
                if request.method == "POST":  # back to the page the form was on, with the reason
                    await run_in_threadpool(self.sessions.flash, login, "error", text)
                    return RedirectResponse(back(request), status_code=303)
                return self.error(404 if isinstance(exc, LookupError) else 400, text, login.principal)
        return endpoint


def _message(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        return f"{'.'.join(str(x) for x in first['loc']) or 'form'}: {first['msg']}"
    return str(exc).strip("'\"")


def secured(response: Response) -> Response:
    response.headers.update(HEADERS)
    return response


def back(request: Request) -> str:
    """The console page a form was posted from (the Referer, same origin only), else the overview."""
    ref = urllib.parse.urlsplit(request.headers.get("referer", ""))
    if ref.netloc == request.url.netloc and ref.path.startswith(f"{PREFIX}/") and "//" not in ref.path:
        return ref.path + (f"?{ref.query}" if ref.query else "")
    return link("/fleet")


def safe_next(target: str) -> str:
    """Where to go after the login: a console path, never another site."""
    if target.startswith(f"{PREFIX}/") and "//" not in target and "\\" not in target and target.isprintable():
        return target
    return link("/fleet")


def check_origin(request: Request) -> None:
    """A form posted from another site is refused even before its token is looked at (browsers send
    Origin with every POST; SameSite=Strict already keeps the cookie from such requests)."""
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
        raise HttpError(403, "The form was posted from another site.")


def transport_ok(request: Request) -> bool:
    """Session cookies travel only over HTTPS, or to a loopback address (a local browser, a tunnel)."""
    return request.url.scheme == "https" or (request.url.hostname or "") in LOOPBACK


async def read_form(request: Request, limit: int) -> tuple[dict[str, str], dict[str, bytes]]:
    """The form's fields and files; the body is read whole up to limit (413 past it) before parsing."""
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise HttpError(413, f"The form is over {limit >> 10} KiB.")
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": bytes(body), "more_body": False}

    form = await Request(request.scope, replay).form(max_files=1, max_fields=200)
    fields: dict[str, str] = {}
    files: dict[str, bytes] = {}
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            files[name] = await value.read()
        elif len(value) > MAX_FORM:
            raise HttpError(413, f"{name} is too long")
        else:
            fields.setdefault(name, value)
    await form.close()
    return fields, files
