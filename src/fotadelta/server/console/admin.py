"""Users, API tokens and the audit log. Users and the audit log are for administrators (the services
refuse anyone else); every user manages their own tokens, administrators anyone's."""

from __future__ import annotations

from starlette.responses import Response
from starlette.routing import Route

from fotadelta.server.auth import Permission, Role
from fotadelta.server.console.web import Console, Ctx, HttpError, link

AUDIT_PAGE = 50
DAY = 86400.0


def users(ctx: Ctx) -> Response:
    if ctx.request.method == "POST":
        user = ctx.fleet.auth.create_user(ctx.me, ctx.field("name"), ctx.form.get("password", ""), _role(ctx))
        return ctx.done(link("/users"), f"User {user.name} ({user.role.value}) is created.")
    return ctx.render("users.html", nav="users", users=ctx.fleet.auth.users(ctx.me), roles=list(Role))


def user(ctx: Ctx) -> Response:
    name, action = ctx.request.path_params["name"], ctx.field("action")
    if action == "role":
        ctx.fleet.auth.set_user(ctx.me, name, role=_role(ctx))
    elif action in ("disable", "enable"):
        ctx.fleet.auth.set_user(ctx.me, name, disabled=action == "disable")
    elif action == "password":
        ctx.fleet.auth.set_user(ctx.me, name, password=ctx.form.get("password", ""))
    else:
        raise HttpError(400, f"unknown action {action!r}")
    return ctx.done(link("/users"), f"User {name}: {action} done.")


def _role(ctx: Ctx) -> Role:
    try:
        return Role(ctx.field("role"))
    except ValueError:
        raise ValueError(f"a role is one of {', '.join(r.value for r in Role)}") from None


def tokens(ctx: Ctx) -> Response:
    owner = (ctx.field("user") if ctx.request.method == "POST" else ctx.arg("user")) or ctx.me.name
    issued = None
    if ctx.request.method == "POST":
        days = ctx.field("days")
        try:
            ttl = float(days) * DAY if days else None
        except ValueError:
            raise ValueError("the lifetime is a number of days") from None
        issued, _ = ctx.fleet.auth.issue_token(ctx.me, name=ctx.field("name"), role=_role(ctx),
                                               user=owner if owner != ctx.me.name else None, ttl=ttl)
    # The new token's text is shown in this answer only: it is stored nowhere, not even in a message.
    return ctx.render("tokens.html", nav="tokens", owner=owner, tokens=ctx.fleet.auth.tokens(ctx.me, owner),
                      issued=issued, roles=list(Role),
                      users=ctx.fleet.auth.users(ctx.me) if ctx.me.can(Permission.USERS_MANAGE) else [])


def revoke(ctx: Ctx) -> Response:
    token_id = ctx.request.path_params["id"]
    ctx.fleet.auth.revoke_token(ctx.me, token_id)
    owner = ctx.field("user")
    return ctx.done(link("/tokens", user=owner if owner != ctx.me.name else None), f"Token {token_id} is revoked.")


def audit(ctx: Ctx) -> Response:
    before = ctx.int_arg("before")
    action, who = ctx.arg("action") or None, ctx.arg("actor") or None
    entries = ctx.fleet.auth.audit_log(ctx.me, before_id=before if before is not None else 2**62,
                                       limit=AUDIT_PAGE + 1, action=action, who=who)
    return ctx.render("audit.html", nav="audit", entries=entries[:AUDIT_PAGE], more=len(entries) > AUDIT_PAGE,
                      action=action, actor=who)


def routes(console: Console) -> list[Route]:
    return [Route("/users", console.page(users), methods=["GET", "POST"]),
            Route("/users/{name:path}", console.page(user), methods=["POST"]),
            Route("/tokens", console.page(tokens), methods=["GET", "POST"]),
            Route("/tokens/{id:int}", console.page(revoke), methods=["POST"]),
            Route("/audit", console.page(audit))]
