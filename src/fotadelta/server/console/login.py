"""Logging in and out. The login form carries a CSRF token of its own (double submit: the same
random value in a cookie and in the form), since there is no session before the password is checked;
failed logins are throttled per name and per address before any password is hashed (`Auth.login`)."""

from __future__ import annotations

import secrets

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from fotadelta.server.auth import AuthError, Throttled
from fotadelta.server.console.sessions import LIFETIME
from fotadelta.server.console.web import (LOGIN_COOKIE, MAX_FORM, SESSION_COOKIE, Console, Ctx, HttpError, check_origin,
                                          link, read_form, safe_next, secured, transport_ok)


def routes(console: Console) -> list[Route]:
    def form(request: Request, status: int = 200, error: str = "", name: str = "",
             headers: dict[str, str] | None = None) -> Response:
        token = secrets.token_urlsafe(24)
        response = console.render("login.html", status, me=None, csrf=token, flashes=[], path="", error=error,
                                  name=name, next=safe_next(request.query_params.get("next", "")))
        response.set_cookie(LOGIN_COOKIE, token, max_age=3600, path="/", secure=True, httponly=True,
                            samesite="strict")
        response.headers.update(headers or {})
        return response

    async def show(request: Request) -> Response:
        if await run_in_threadpool(console.sessions.find, request.cookies.get(SESSION_COOKIE, "")) is not None:
            return RedirectResponse(link("/fleet"), status_code=303)
        return form(request)

    async def submit(request: Request) -> Response:
        try:
            check_origin(request)
            fields, _ = await read_form(request, MAX_FORM)
        except HttpError as exc:
            return console.error(exc.status, exc.text)
        sent, kept = fields.get("csrf", ""), request.cookies.get(LOGIN_COOKIE, "")
        if not sent or not secrets.compare_digest(sent.encode(), kept.encode()):
            return form(request, 403, "The login form had expired: try again.")
        if not transport_ok(request):
            return console.error(403, "The console logs in over HTTPS only (or from this machine's loopback).")
        name, password = fields.get("name", "").strip(), fields.get("password", "")
        address = request.client.host if request.client else ""
        if not name or len(name) > 64 or not password or len(password) > 1024:
            return form(request, 400, "Give your user name and password.", name[:64])
        try:
            principal = await run_in_threadpool(console.fleet.auth.login, name, password, address)
        except Throttled as exc:
            if exc.busy:
                return console.error(503, "The server is busy checking other logins: try again in a moment.")
            return form(request, 429, f"Too many failed logins: try again in {exc.retry_after} seconds.", name,
                        {"retry-after": str(exc.retry_after)})
        except AuthError:
            return form(request, 401, "Wrong user name or password.", name)
        session_id = await run_in_threadpool(console.sessions.open, principal)
        await run_in_threadpool(console.fleet.auth.audit, principal, "console.login", principal.name,
                                detail={"address": address})
        response = secured(RedirectResponse(safe_next(fields.get("next", "")), status_code=303))
        response.set_cookie(SESSION_COOKIE, session_id, max_age=int(LIFETIME), path="/", secure=True, httponly=True,
                            samesite="strict")
        response.delete_cookie(LOGIN_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
        return response

    def logout(ctx: Ctx) -> Response:
        ctx.console.sessions.close(ctx.login)
        ctx.fleet.auth.audit(ctx.me, "console.logout", ctx.me.name)
        response = secured(RedirectResponse(link("/login"), status_code=303))
        response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
        return response

    return [Route("/login", show, methods=["GET"]), Route("/login", submit, methods=["POST"]),
            Route("/logout", console.page(logout), methods=["POST"])]

