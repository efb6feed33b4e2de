"""Shared parts of the fleet-management tests: a DM server with its fleet services and REST API on
loopback (real HTTP, SQLite in tmp_path), one user per role with an API token, and a recorder of
which API operations a test called.

Devices are the emulated ones of dm_fixtures (DmClient on emulated flash, real signed packages)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher
from dm_fixtures import Lab, Release

from fotadelta.emulator import Fleet as Devices
from fotadelta.server import DmServer, ServerConfig, create_app, serve_in_thread
from fotadelta.server.api import openapi
from fotadelta.server.auth import Principal, Role
from fotadelta.server.fleet import Fleet
from fotadelta.server.push import HttpPush

ADMIN_TOKEN = "bootstrap-admin-token"
ROLES = {"ada": Role.ADMIN, "dana": Role.DEPLOYMENT_MANAGER, "carl": Role.CUSTOMER_CARE, "rita": Role.READ_ONLY}


def _operation_patterns() -> list[tuple[str, re.Pattern[str], str]]:
    doc = openapi()
    return [(method.upper(), re.compile("^" + re.sub(r"\{[^}/]+\}", "[^/]+", path.replace(".", r"\.")) + "$"),
             op["operationId"]) for path, methods in doc["paths"].items() for method, op in methods.items()]


PATTERNS = _operation_patterns()


def operation_of(method: str, path: str) -> str | None:
    # A literal path (devices/export) wins over a template (devices/{dev_id}).
    found = [(p.pattern.count("[^/]+"), op) for m, p, op in PATTERNS if m == method and p.match(path)]
    return min(found)[1] if found else None


@dataclass
class Api:
    """The fleet API on loopback, a token per role, and the operations called so far."""

    lab: Lab
    services: Fleet
    tokens: dict[str, str]
    called: set[str] = field(default_factory=set)

    @property
    def url(self) -> str:
        return self.lab.url

    def principal(self, user: str) -> Principal:
        return self.services.auth.authenticate(self.tokens[user])

    def call(self, method: str, path: str, user: str | None = "ada", *, expect: int | None = None,
             **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if user is not None:
            headers["authorization"] = f"Bearer {self.tokens[user]}"
        r = httpx.request(method, f"{self.url}{path}", headers=headers, timeout=30, **kw)
        op = operation_of(method, path.split("?")[0])
        if op is not None and r.status_code < 500:
            self.called.add(op)
        if expect is not None:
            assert r.status_code == expect, f"{method} {path}: {r.status_code} {r.text}"
        return r

    def json(self, method: str, path: str, user: str | None = "ada", *, expect: int = 200, **kw: Any) -> Any:
        return self.call(method, path, user, expect=expect, **kw).json()


def start_api(tmp: Path, release: Release, devices: Devices) -> tuple[Api, Any]:
    server = DmServer(ServerConfig(tmp / "srv", "http://127.0.0.1:0", admin_token=ADMIN_TOKEN), push=HttpPush())
    # argon2id at the lowest cost: these tests create users by the dozen (test_fleet_roles checks the defaults).
    services = Fleet(server, password_hasher=PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
    running = serve_in_thread(create_app(server, services))
    url = f"http://127.0.0.1:{running.port}"
    server.config.public_url = url
    root = services.auth.bootstrap_admin()
    tokens = {"root": ADMIN_TOKEN}
    for name, role in ROLES.items():
        services.auth.create_user(root, name, f"{name}-password", role)
        tokens[name] = services.auth.issue_token(root, user=name, name="tests")[0]
    return Api(Lab(server, running, url, release, devices, tmp), services, tokens), running


@pytest.fixture
def api(tmp_path: Path, release: Release, fleet: Devices) -> Iterator[Api]:
    api, running = start_api(tmp_path, release, fleet)
    try:
        yield api
    finally:
        fleet.wait()
        running.stop()
        api.services.close()


__all__ = ["ADMIN_TOKEN", "Api", "ROLES", "api", "operation_of", "start_api"]
