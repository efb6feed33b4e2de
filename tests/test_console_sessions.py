"""The console's session store and login throttle on their own (no browser): expiry by idle time
and by age, the cap per user, a disabled user or a changed role taking effect at once, and the
throttle's windows per name and per address with its bounded memory."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select

from fotadelta.server import DmServer, ServerConfig
from fotadelta.server.auth import Role
from fotadelta.server.console import sessions as sessions_module
from fotadelta.server.console.sessions import ConsoleSessionRow, Sessions
from fotadelta.server.logins import MAX_KEYS, LoginThrottle
from fotadelta.server.fleet import Fleet


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    server = DmServer(ServerConfig(tmp_path, "http://127.0.0.1:0"))
    return Fleet(server, password_hasher=PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))


def _user(fleet: Fleet, name: str, role: Role = Role.CUSTOMER_CARE) -> None:
    fleet.auth.create_user(fleet.auth.bootstrap_admin(), name, f"{name}-password", role)


def test_a_session_stands_for_its_user_as_the_user_is_now(fleet: Fleet) -> None:
    _user(fleet, "carl")
    sessions = Sessions(fleet.server.store)
    sid = sessions.open(fleet.auth.login("carl", "carl-password"))
    login = sessions.find(sid)
    assert login is not None and login.principal.role == Role.CUSTOMER_CARE and len(login.csrf) >= 40
    with fleet.server.store.tx() as s:  # only the id's hash is stored
        assert s.scalars(select(ConsoleSessionRow.digest)).all() == [login.digest] and sid not in login.digest
    fleet.auth.set_user(fleet.auth.bootstrap_admin(), "carl", role=Role.READ_ONLY)
    assert sessions.find(sid).principal.role == Role.READ_ONLY  # type: ignore[union-attr]
    fleet.auth.set_user(fleet.auth.bootstrap_admin(), "carl", disabled=True)
    assert sessions.find(sid) is None
    assert sessions.find("") is None and sessions.find("x" * 1000) is None


def test_sessions_end_when_idle_or_old_and_a_user_keeps_a_bounded_number(fleet: Fleet,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    _user(fleet, "dana", Role.DEPLOYMENT_MANAGER)
    sessions = Sessions(fleet.server.store)
    dana = fleet.auth.login("dana", "dana-password")
    now = [time.time()]
    monkeypatch.setattr(sessions_module.time, "time", lambda: now[0])
    idle = sessions.open(dana)
    now[0] += sessions_module.IDLE + 1
    assert sessions.find(idle) is None
    old, born = sessions.open(dana), now[0]
    while now[0] + sessions_module.IDLE / 2 < born + sessions_module.LIFETIME:  # in use all along
        now[0] += sessions_module.IDLE / 2
        assert sessions.find(old) is not None
    now[0] = born + sessions_module.LIFETIME + 1
    assert sessions.find(old) is None
    many = []
    for _ in range(sessions_module.PER_USER + 5):
        now[0] += 1
        many.append(sessions.open(dana))
    assert [sessions.find(s) is not None for s in many] == [False] * 5 + [True] * sessions_module.PER_USER


def test_logout_and_flash_messages(fleet: Fleet) -> None:
    _user(fleet, "rita", Role.READ_ONLY)
    sessions = Sessions(fleet.server.store)
    login = sessions.find(sessions.open(fleet.auth.login("rita", "rita-password")))
    assert login is not None
    for i in range(8):
        sessions.flash(login, "ok", f"message {i}")
    assert [m["text"] for m in sessions.take_flash(login)] == [f"message {i}" for i in range(3, 8)]
    assert sessions.take_flash(login) == []
    sessions.close(login)
    with fleet.server.store.tx() as s:
        assert s.scalars(select(ConsoleSessionRow)).all() == []


def test_the_throttle_counts_failures_per_name_and_per_address_within_its_window() -> None:
    t = LoginThrottle(window=100.0, per_name=3, per_address=5)
    for i in range(3):
        assert t.wait("Carl", "10.0.0.1", now=i) == 0
        t.failed("carl", "10.0.0.1", now=i)
    assert t.wait("CARL", "10.0.0.2", now=3) == pytest.approx(97.0)  # names are counted whatever their case
    assert t.wait("carl", "10.0.0.1", now=99.5) == pytest.approx(0.5)
    assert t.wait("carl", "10.0.0.1", now=100.5) == 0  # the oldest failure has left the window
    t = LoginThrottle(window=100.0, per_name=3, per_address=5)
    for i in range(5):  # a name each time, from one address
        t.failed("carl" if i < 2 else f"guess{i}", "10.0.0.1", now=i)
    assert t.wait("dana", "10.0.0.1", now=10) > 0 and t.wait("dana", "10.0.0.9", now=10) == 0
    t.succeeded("carl")  # a right password clears the name, not the address
    assert t.wait("carl", "10.0.0.9", now=10) == 0 and t.wait("carl", "10.0.0.1", now=10) > 0


def test_the_throttle_forgets_the_oldest_keys_past_its_bound() -> None:
    t = LoginThrottle(window=1000.0, per_name=1, per_address=10**9)
    for i in range(MAX_KEYS):
        t.failed(f"user{i}", "10.0.0.1", now=0)
    assert t.wait("user1", "10.0.0.2", now=1) > 0
    t.failed("one-more", "10.0.0.1", now=1)
    assert len(t._failures) <= MAX_KEYS
    assert t.wait("user0", "10.0.0.2", now=1) == 0  # (forgotten, as the least recently failed)
