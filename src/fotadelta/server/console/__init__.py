"""The web console: server-rendered pages (Jinja2, plain forms, one small script that polls) over the
fleet services, behind a login. Mounted at /console by `server/app.py`.

| module | concern |
|---|---|
| `sessions.py` | log-in sessions kept on the server (cookie id hashed), their CSRF tokens, flash messages |
| `web.py` | the page wrapper: session, CSRF and origin checks, bounded forms, errors as pages, headers |
| `login.py` | log in and out |
| `devices.py` | fleet overview, device page, DM tree explorer, command console |
| `releases.py`, `campaigns.py`, `admin.py` | releases; campaigns, live progress and reports; users, tokens, audit |

Every action is a call of a fleet service with the logged-in user's `Principal`: the service checks
the permission and writes the audit entry; pages only leave out what the user may not do."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from fotadelta.server.console import admin, campaigns, devices, login, releases
from fotadelta.server.console.web import PREFIX, Console, link
from fotadelta.server.fleet import Fleet


def console_routes(fleet: Fleet) -> list[BaseRoute]:
    """The console's routes, all under /console."""
    console = Console(fleet)

    async def home(request: Request) -> Response:
        return RedirectResponse(link("/fleet"), status_code=303)

    return [Mount(PREFIX, routes=[
        Route("/", home),
        Mount("/static", StaticFiles(packages=[("fotadelta.server.console", "static")]), name="static"),
        *login.routes(console), *devices.routes(console), *releases.routes(console), *campaigns.routes(console),
        *admin.routes(console),
    ])]


__all__ = ["console_routes"]
