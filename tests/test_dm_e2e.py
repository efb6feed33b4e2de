"""OMA DM sessions end to end: a DmServer on loopback (real HTTP, SQLite in tmp_path) and emulated
devices (DmClient on emulated flash, real signed packages), plus the Endpoint's large-object rules.

Each test asserts what the device and the server end up with (versions, job states, the tree, the
images on flash) and, where the protocol is the point, the messages on the wire (recorded through
httpx event hooks on the device's HTTP client)."""

from __future__ import annotations

import base64
import itertools
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from dm_fixtures import (BLOCK, MAKE, MODEL, Lab, Raw, Release, Wire, hdr_status, secured_sim, start_server)
from sqlalchemy import event, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fotadelta import package
from fotadelta.dm import auth, notification
from fotadelta.dm import client as dm_client
from fotadelta.dm.client import (ALERT_GENERIC, FUMO, DmClient, FumoState, ScriptedUi, SessionError)
from fotadelta.dm.codec import Encoding, decode, encode
from fotadelta.dm.model import (Add, Alert, Atomic, Chal, Delete, Exec, Get, Item, Meta, Replace, Results, Sequence,
                                Status)
from fotadelta.dm.session import Endpoint, walk
from fotadelta.emulator import Fleet
from fotadelta.server import DmServer, ServerConfig, create_app, engine, serve_in_thread
from fotadelta.server.app import Running
from fotadelta.server.capabilities import DeviceCapability
from fotadelta.server.tables import CommandRow
from fotadelta.server.push import HttpPush, PushError, SmsPush
from fotadelta.server.store import DeviceRow, JobRow, SessionRow

FUMO_DU = "org.openmobilealliance.dm.firmwareupdate.downloadandupdate"


# -- helpers ---------------------------------------------------------------------------------------

def _shown(client: DmClient) -> list[str]:
    """What the device's (scripted) user was shown."""
    assert isinstance(client.ui, ScriptedUi)
    return client.ui.shown


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Proxy:
    """An HTTP hop in front of the lab's server that passes DM messages on, letting tamper change reply n.

    While it runs the server names it in its RespURIs (as a server behind a reverse proxy does), so the
    whole session goes through it."""

    def __init__(self, lab: Lab, tamper: Callable[[int, bytes], bytes]) -> None:
        count = itertools.count(1)
        upstream = lab.url

        async def dm(request: Request) -> Response:
            headers = {k: v for k, v in request.headers.items() if k in ("content-type", "x-syncml-hmac")}
            async with httpx.AsyncClient() as client:
                r = await client.post(f"{upstream}{request.url.path}", content=await request.body(), headers=headers)
            out = {k: v for k, v in r.headers.items() if k == "x-syncml-hmac"}
            return Response(tamper(next(count), r.content), status_code=r.status_code,
                            media_type=r.headers["content-type"], headers=out)

        async def other(request: Request) -> Response:  # downloads, passed on untouched
            headers = {k: v for k, v in request.headers.items() if k == "range"}
            async with httpx.AsyncClient() as client:
                r = await client.request(request.method, f"{upstream}{request.url.path}", headers=headers)
            out = {k: v for k, v in r.headers.items() if k in ("content-type", "content-range", "content-length")}
            return Response(r.content, status_code=r.status_code, headers=out)
        self.running = serve_in_thread(Starlette(routes=[Route("/dm", dm, methods=["POST"]),
                                                         Route("/dm/{token}", dm, methods=["POST"]),
                                                         Route("/{path:path}", other, methods=["GET", "HEAD"])]))
        self.port = self.running.port
        self.url = f"http://127.0.0.1:{self.port}/dm"
        self._config, self._public = lab.server.config, lab.server.config.public_url
        self._config.public_url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._config.public_url = self._public
        self.running.stop()


def _tampering_proxy(lab: Lab, tamper: Callable[[int, bytes], bytes]) -> _Proxy:
    return _Proxy(lab, tamper)


def _queue(lab: Lab, dev_id: str, spec: list[dict[str, object]]) -> int:
    """A DM command (its JSON form, server/command_spec.py) queued for the device's next session."""
    with lab.server.store.tx() as s:
        row = CommandRow(dev_id=dev_id, batch="test", spec=spec)
        s.add(row)
        s.flush()
        return row.id


def _command(lab: Lab, command_id: int) -> CommandRow:
    with lab.server.store.tx() as s:
        row = s.get(CommandRow, command_id)
        assert row is not None
        return row


def _code(lab: Lab, command_id: int, index: int) -> int:
    code = _command(lab, command_id).statuses[index]["code"]
    assert code is not None, f"no status for command {index}"
    return int(code)


def _endpoint(max_msg: int = 16 * 1024, max_obj: int = 1 << 20, encoding: Encoding = Encoding.WBXML) -> Endpoint:
    ep = Endpoint(session_id="1", local="a", remote="b", encoding=encoding, max_msg_size=max_msg,
                  max_obj_size=max_obj)
    ep.peer_max_msg = max_msg
    return ep


def _chunk(data: bytes, *, size: int | None = None, more: bool, target: str = "./Ext/Big") -> Replace:
    return Replace([Item(target=target, meta=Meta(format="bin", size=size), data=data, more_data=more)])


# -- 2. a full FUMO session in each encoding and each authentication -------------------------------

@pytest.mark.parametrize("encoding", [Encoding.XML, Encoding.WBXML], ids=["xml", "wbxml"])
@pytest.mark.parametrize("auth", ["md5", "basic", "hmac"])
def test_fumo_update_over_http_push(lab: Lab, encoding: Encoding, auth: str) -> None:
    wire = Wire()
    client = lab.device(auth=auth, encoding=encoding, wire=wire, register=auth != "md5")
    dev_id = client.config.dev_id
    client.run()  # bootstrap: the server learns make, model, FwV and the push address
    row = lab.dev_row(dev_id)
    assert (row.make, row.model, row.version, row.auth) == ("Acme", "S1", "1.0", auth)
    assert row.push_url == lab.fleet.push_url(dev_id) and row.large_objects

    job = lab.update(client, "1.1")

    assert (job.state, job.result_code) == ("succeeded", 200)
    assert client.device.version == "1.1" and lab.dev_row(dev_id).version == "1.1"
    assert client.device.image() == lab.release.images["1.1"]
    assert client.tree.value("./DevDetail/FwV") == "1.1"
    assert client.fumo_state == FumoState.UPDATE_SUCCESSFUL_NO_DATA
    # The pre-update confirmation and then the post-update notice were shown.
    shown = _shown(client)
    assert len(shown) == 2 and "1.1" in shown[0] and "1.1" in shown[1]
    assert shown[0] != shown[1]  # a question before, a notice after
    # The server's Exec carried the job's correlator, and the device's Generic Alert echoed it.
    execs = [c for c in wire.received() if isinstance(c, Exec)]
    assert [e.correlator for e in execs] == [job.correlator]
    assert any(isinstance(c, Sequence) for c in wire.received())
    reports = wire.client_alerts(ALERT_GENERIC)
    assert len(reports) == 1
    report = reports[0]
    assert report.correlator == job.correlator
    assert report.items[0].source == f"{FUMO}/DownloadAndUpdate" and report.items[0].data == "200"
    assert report.items[0].meta is not None and report.items[0].meta.type == FUMO_DU
    assert report.items[0].meta.format == "int"
    assert [s.state for s in lab.sessions(dev_id)] == ["completed"] * 3  # bootstrap, update, report
    assert len({x.request.header.session_id for x in wire.exchanges}) == 3
    # Every message of the device went in the configured encoding, and so did every answer.
    assert {x.request_type for x in wire.exchanges} == {encoding.content_type}
    assert {x.response_type for x in wire.exchanges} == {encoding.content_type}


def test_a_notified_session_never_takes_the_id_of_one_of_the_devices_last_sessions(
        lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    client = lab.device()
    client.run()
    client.run()
    last = [int(log.session_id, 16) for log in client.sessions]
    assert len(set(last)) == 2  # the client's own choices differ too, however quickly they follow
    # The server's random draw lands on the device's last session id: the notification takes the next free one.
    monkeypatch.setattr(engine.secrets, "randbelow", lambda _n: last[-1] - 1)
    sid = notification.parse(lab.server.notification(client.config.dev_id)).session_id
    taken = set(last)
    expected = last[-1] % 0xFFFF + 1
    while expected in taken:
        expected = expected % 0xFFFF + 1
    assert sid == expected


def test_a_client_keeps_the_logs_of_its_latest_sessions_only(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """A device that listens for months does not grow a log per session without end: it keeps
    those of its latest SESSION_LOGS sessions, each with its own id."""
    monkeypatch.setattr(dm_client, "SESSION_LOGS", 2)
    client = lab.device()
    for _ in range(3):
        client.run()
    assert [s.state for s in lab.sessions(client.config.dev_id)] == ["completed"] * 3
    kept = [log.session_id for log in client.sessions]
    assert len(kept) == 2 and len(set(kept)) == 2
    assert all(log.messages > 0 and not log.aborted for log in client.sessions)


# -- 3. authentication -----------------------------------------------------------------------------

def test_a_message_without_credentials_is_challenged_with_407_and_the_retry_with_the_nonce_passes(lab: Lab) -> None:
    raw = Raw.factory(lab.dm_url)
    reply = raw.post(raw.package1())
    status = hdr_status(reply)
    assert status.code == 407 and status.chal is not None
    meta = status.chal.meta
    assert (meta.type, meta.format) == ("syncml:auth-md5", "b64") and meta.next_nonce
    nonce = base64.b64decode(meta.next_nonce)
    assert len(nonce) == 16
    # Nothing in the unauthenticated message was executed: every command is answered 407 too.
    assert sorted(s.code for s in reply.commands if isinstance(s, Status)) == [407, 407, 407]
    with lab.server.store.tx() as s:
        assert s.get(DeviceRow, raw.dev_id) is None  # not enrolled before it proved anything
    # Package 1 again, same session, with the digest over the nonce the challenge gave.
    reply = raw.post(raw.package1(), cred=raw.md5(nonce))
    assert hdr_status(reply).code == 212
    assert lab.dev_row(raw.dev_id).make == "Acme"
    assert any(isinstance(c, Get) for c in reply.commands)  # the session goes on: the server reads DevDetail


def test_a_client_with_a_stale_nonce_retries_with_the_next_nonce(lab: Lab) -> None:
    wire = Wire()
    client = lab.device(wire=wire, listen=False)
    client.client_nonce = b"stale nonce"
    client.run()
    first, second = wire.exchanges[0], wire.exchanges[1]
    assert first.response is not None and second.response is not None
    challenge = hdr_status(first.response)
    assert challenge.code == 401 and challenge.chal is not None and challenge.chal.meta.next_nonce
    nonce = base64.b64decode(challenge.chal.meta.next_nonce)
    assert second.request.header.session_id == first.request.header.session_id
    cred = second.request.header.cred
    assert cred is not None and cred.data == auth.md5_digest(client.config.user, client.config.password, nonce)
    assert hdr_status(second.response).code == 212
    assert lab.dev_row(client.config.dev_id).version == "1.0"


def test_a_wrong_password_fails_the_session_and_the_server_records_it(lab: Lab) -> None:
    wire = Wire()
    client = lab.device(wire=wire, listen=False)
    client.config.password = "not the password"
    client.config.retries = 0
    with pytest.raises(SessionError, match="401"):
        client.run()
    answers = [x.response for x in wire.exchanges if x.response is not None]
    assert len(answers) == 3 and {hdr_status(r).code for r in answers} == {401}
    # The third refusal in a row ends the session: Alert 1223, no challenge.
    *challenged, last = answers
    assert hdr_status(last).chal is None and any(isinstance(c, Alert) and c.data == 1223 for c in last.commands)
    # Each challenge carried a nonce other than the stored one (computed, not stored), and the client used it.
    nonces = [hdr_status(r).chal.meta.next_nonce for r in challenged]  # type: ignore[union-attr]
    dev_id = client.config.dev_id
    assert nonces and base64.b64encode(bytes(4)).decode() not in nonces
    for x, nonce in zip(wire.exchanges[1:], nonces):
        cred = x.request.header.cred
        assert cred is not None and cred.data == auth.md5_digest(client.config.user, "not the password",
                                                                 base64.b64decode(nonce))
    # Strangers leave nothing behind: no device row (it was never enrolled), no session, no event.
    with lab.server.store.tx() as s:
        assert s.get(DeviceRow, dev_id) is None
    assert lab.sessions(dev_id) == [] and lab.events(dev_id) == []


def test_every_session_uses_a_fresh_nonce(lab: Lab) -> None:
    wire = Wire()
    client = lab.device(wire=wire, listen=False)
    dev_id = client.config.dev_id
    seen = []
    for _ in range(3):
        client.run()
        seen.append(lab.dev_row(dev_id).client_nonce)
    assert len(set(seen)) == 3 and base64.b64encode(bytes(4)).decode() not in seen
    # Each session's credentials were the digest over the nonce the previous session ended with.
    firsts = [x for x in wire.exchanges if x.request.header.msg_id == 1]
    assert len(firsts) == 3
    for x, nonce in zip(firsts[1:], seen[:-1]):
        cred = x.request.header.cred
        assert cred is not None
        assert cred.data == auth.md5_digest(client.config.user, client.config.password, base64.b64decode(nonce))
        assert x.response is not None and hdr_status(x.response).code == 212


def test_the_client_refuses_a_server_with_wrong_credentials(lab: Lab) -> None:
    wire = Wire()
    client = lab.device(wire=wire, listen=False)
    dev_id = client.config.dev_id
    client.run()  # bootstrap with the right credentials
    lab.server.assign(dev_id, "1.1")
    wire.exchanges.clear()
    client.config.server_password = "an impostor's password"
    with pytest.raises(SessionError, match="server's credentials"):
        client.run()
    # The device challenged the server with 401 on its SyncHdr (and a nonce) and 401 for each command.
    sent = wire.client_statuses()
    hdr = [s for s in sent if s.cmd == "SyncHdr"]
    assert hdr and all(s.code == 401 and s.chal is not None and s.chal.meta.next_nonce for s in hdr)
    assert all(s.code == 401 for s in sent if s.cmd in ("Sequence", "Get", "Exec", "Replace", "Alert"))
    assert any(s.cmd == "Sequence" for s in sent)
    # Nothing was executed: no download, no install, the FUMO nodes untouched, nothing shown.
    assert client.tree.value(f"{FUMO}/DownloadAndUpdate/PkgURL") == ""
    assert client.tree.value(f"{FUMO}/PkgName") == ""
    assert client.download is None and client.device.version == "1.0"
    assert _shown(client) == []
    assert lab.job(lab.jobs(dev_id)[0].id).state != "succeeded"


def test_hmac_every_server_message_is_checked(lab: Lab) -> None:
    client = lab.device(auth="hmac", register=True, listen=False)
    client.run()
    # Two packages in one session: the second arrives in the server's second message, which a
    # man in the middle changes. The device must refuse it, not write the forged value.
    _queue(lab, client.config.dev_id, [{"op": "Replace", "target": f"{FUMO}/PkgName", "data": "first"}])
    _queue(lab, client.config.dev_id, [{"op": "Replace", "target": f"{FUMO}/PkgVersion", "data": "genuine"}])
    tampered: list[int] = []

    def tamper(n: int, body: bytes) -> bytes:
        if b"genuine" in body and not tampered:  # (the first message that carries it)
            tampered.append(n)
            return body.replace(b"genuine", b"forged!")
        return body

    proxy = _tampering_proxy(lab, tamper)
    try:
        wire = Wire()
        client.http = wire.client()
        client.config.server_url = f"http://127.0.0.1:{proxy.port}/dm"
        client.run()
    finally:
        proxy.stop()
    assert client.tree.value(f"{FUMO}/PkgVersion") == "genuine"  # the server sent it again, untouched
    assert client.tree.value(f"{FUMO}/PkgName") == "first"
    hdr = [s for s in wire.client_statuses() if s.cmd == "SyncHdr"]
    assert tampered and [s.code for s in hdr][tampered[0] - 2:tampered[0]] == [200, 401]
    # HMAC: 200 (never 212) and a new nonce for the server in every status the device sends.
    assert 212 not in [s.code for s in hdr]
    nonces = [s.chal.meta.next_nonce for s in hdr if s.chal is not None]
    assert len(nonces) == len(hdr) and len(set(nonces)) == len(nonces)


def test_a_session_with_nothing_to_do_keeps_the_notification_nonce_in_step(lab: Lab) -> None:
    # The server's first answer is its whole (empty) package: the device sends nothing more, so the new
    # server nonce it would have given in its SyncHdr status never reaches the server. It must keep the
    # old one, or the next package #0 (keyed by that nonce) is refused.
    client = lab.device()
    client.run()  # bootstrap (the server reads DevDetail: the device answers, with a new nonce)
    log = client.run()  # nothing to do: one message each way
    assert log.messages == 1
    assert base64.b64decode(lab.dev_row(client.config.dev_id).server_nonce) == client.server_nonce
    job = lab.update(client, "1.1")
    assert job.state == "succeeded" and client.device.version == "1.1"


def test_a_reused_session_id_is_a_new_session_that_must_authenticate(lab: Lab) -> None:
    client = lab.device(listen=False)
    client.run()
    sid = client.sessions[-1].session_id
    # Someone else starts "a session" with the same id, without credentials: the completed session's
    # authentication does not carry over.
    raw = Raw(lab.dm_url, client.config.dev_id, session_id=sid, user=client.config.user)
    reply = raw.post(raw.package1())
    assert hdr_status(reply).code == 407
    assert not any(isinstance(c, Get) for c in reply.commands)


def test_a_malformed_nonce_from_a_device_is_not_taken(lab: Lab) -> None:
    client = lab.device(listen=False)
    client.run()
    dev_id = client.config.dev_id
    before = lab.dev_row(dev_id).server_nonce
    raw = Raw.factory(lab.dm_url, dev_id, session_id="7C")
    reply = raw.post(raw.package1(), cred=raw.md5(base64.b64decode(lab.dev_row(dev_id).client_nonce)))
    assert hdr_status(reply).code == 212
    for bad in ("abc", "!!!!", "A" * 400):
        reply = raw.post([Status(raw.msg_id, 0, "SyncHdr", 212, chal=Chal(Meta(format="b64", next_nonce=bad)))])
        assert hdr_status(reply).code == 200
    assert lab.dev_row(dev_id).server_nonce == before
    lab.server.notification(dev_id)  # package #0 is still built
    client.run()  # and the device's next session still works


def test_a_malformed_nonce_from_the_network_is_a_session_error_for_the_device(lab: Lab) -> None:
    client = lab.device(listen=False)
    proxy = _tampering_proxy(lab, lambda n, body: re.sub(
        rb"<NextNonce([^>]*)>[^<]*</NextNonce>", rb"<NextNonce\1>not*base64</NextNonce>", body))
    try:
        client.config.server_url = f"http://127.0.0.1:{proxy.port}/dm"
        with pytest.raises(SessionError):
            client.run()
    finally:
        proxy.stop()


def test_an_unauthenticated_reply_cannot_redirect_the_device(lab: Lab) -> None:
    # A reply with forged server credentials names another RespURI: the device refuses the reply and
    # must not send its next message (with its credentials) there.
    trapped: list[int] = []

    def record(n: int, body: bytes) -> bytes:
        trapped.append(n)
        return body
    trap = _tampering_proxy(lab, record)

    def forge(n: int, body: bytes) -> bytes:
        if n != 1:
            return body
        body = re.sub(rb"(<Cred>.*?<Data>)[^<]*(</Data>)", rb"\1Zm9yZ2VkIQ==\2", body, flags=re.DOTALL)
        return body.replace(b"</Source>", f"</Source><RespURI>http://127.0.0.1:{trap.port}/dm</RespURI>".encode(), 1)
    proxy = _tampering_proxy(lab, forge)
    try:
        wire = Wire()
        client = lab.device(listen=False, wire=wire, server_url=f"http://127.0.0.1:{proxy.port}/dm")
        client.run()
    finally:
        proxy.stop()
        trap.stop()
    assert trapped == []
    assert next(s.code for s in wire.client_statuses() if s.cmd == "SyncHdr") == 401
    assert lab.dev_row(client.config.dev_id).version == "1.0"  # the retry with the real server went through


# -- 4. package #0 over SMS ------------------------------------------------------------------------

def test_package0_over_sms_opens_the_session(tmp_path: Path, release: Release, fleet: Fleet) -> None:
    # A long server id makes package #0 span several concatenated SMS.
    server_id = "fotadelta-" + "x" * 140
    lab = start_server(tmp_path, release, fleet, server_id=server_id)
    lab.publish_chain()
    try:
        sent: list[tuple[str, bytes]] = []
        lab.server.push = SmsPush(lambda msisdn, segment: sent.append((msisdn, segment)))
        client = lab.device(msisdn="+491701234567", listen=False, server_id=server_id)
        client.run()
        assert lab.dev_row(client.config.dev_id).msisdn == "+491701234567"
        job = lab.server.assign(client.config.dev_id, "1.1")
        lab.server.notify(client.config.dev_id)
        assert len(sent) >= 2 and {m for m, _ in sent} == {"+491701234567"}
        assert all(len(seg) <= 140 for _, seg in sent)
        segments = [seg for _, seg in sent]
        random.Random(1).shuffle(segments)  # SMS arrive in any order
        pkg0 = notification.parse_wap_push(notification.join_sms_segments(segments))
        trigger = notification.parse(pkg0)
        assert trigger.server_id == server_id
        log = client.handle_notification(pkg0)
        assert log.session_id == notification.session_id_text(trigger.session_id)
        assert (lab.job(job.id).state, client.device.version) == ("succeeded", "1.1")
        assert client.device.image() == lab.release.images["1.1"]
        # The session the SMS asked for is the one the server expected (recorded when it notified).
        sessions = lab.sessions(client.config.dev_id)
        assert [(s.session_id, s.initiator, s.state) for s in sessions if s.initiator == "server"] == \
            [(log.session_id, "server", "completed")]
    finally:
        lab.running.stop()


def test_assign_with_notify_plans_and_notifies_in_one_transaction(lab: Lab) -> None:
    sent: list[bytes] = []
    lab.server.push = SmsPush(lambda _msisdn, segment: sent.append(segment))
    client = lab.device(msisdn="+491701234569", listen=False)
    client.run()
    commits: list[int] = []
    event.listen(lab.server.store.engine, "commit", lambda *_: commits.append(1))
    job = lab.server.assign(client.config.dev_id, "1.1", notify=True)
    assert len(commits) == 1 and sent  # (the job and the notified session together; the push after them)
    pkg0 = notification.parse_wap_push(notification.join_sms_segments(sent))
    log = client.handle_notification(pkg0)
    trigger = notification.parse(pkg0)
    assert log.session_id == notification.session_id_text(trigger.session_id)
    assert (lab.job(job.id).state, client.device.version) == ("succeeded", "1.1")
    assert [(s.session_id, s.state) for s in lab.sessions(client.config.dev_id) if s.initiator == "server"] == \
        [(log.session_id, "completed")]
    lab.server.push = None
    with pytest.raises(RuntimeError, match="no notification transport"):
        lab.server.assign(client.config.dev_id, "1.2", notify=True)
    assert [j.goal_version for j in lab.jobs(client.config.dev_id)] == ["1.1"]  # (refused before planning)


def test_a_failing_sms_gateway_is_a_push_error(lab: Lab) -> None:
    def gateway(msisdn: str, segment: bytes) -> None:
        raise OSError("the SMSC is down")
    lab.server.push = SmsPush(gateway)
    client = lab.device(msisdn="+491701234568", listen=False)
    client.run()
    with pytest.raises(PushError, match="SMSC is down"):
        lab.server.notify(client.config.dev_id)
    # The operator API plans the job and says the notification failed (the device gets it at its next
    # session), not a server error.
    r = httpx.post(f"{lab.url}/api/v1/devices/{client.config.dev_id}/update", json={"version": "1.1"})
    assert r.status_code == 201, r.text
    assert r.json()["notified"] is False and "SMSC is down" in r.json()["notify_error"]


# -- 5. large objects ------------------------------------------------------------------------------

@pytest.mark.parametrize("encoding", [Encoding.XML, Encoding.WBXML], ids=["xml", "wbxml"])
def test_inline_delivery_in_chunks_to_a_device_with_a_small_max_msg_size(lab: Lab, encoding: Encoding) -> None:
    wire = Wire()
    client = lab.device(wire=wire, max_msg_size=2048, encoding=encoding)
    client.run()
    assert lab.dev_row(client.config.dev_id).large_objects
    job = lab.update(client, "1.1", delivery="inline")
    assert (job.state, job.result_code) == ("succeeded", 200)
    assert client.device.image() == lab.release.images["1.1"] and lab.dev_row(client.config.dev_id).version == "1.1"
    assert client.downloaded_bytes == 0  # nothing was fetched over HTTP: the package came in the session
    chunks = [c for c in wire.received() if isinstance(c, Replace) and c.items[0].target == f"{FUMO}/Update/PkgData"]
    assert len(chunks) >= 3
    assert all(c.items[0].more_data for c in chunks[:-1]) and not chunks[-1].items[0].more_data
    first = chunks[0].items[0].meta
    assert first is not None and first.size == len(lab.release.p10_11)
    assert b"".join(c.items[0].data for c in chunks) == lab.release.p10_11  # type: ignore[misc]
    answers = [s.code for s in wire.client_statuses() if s.cmd == "Replace" and s.target_refs == [f"{FUMO}/Update/PkgData"]]
    assert answers == [213] * (len(chunks) - 1) + [200]
    # Every message respected the device's MaxMsgSize.
    assert all(len(x.response_bytes) <= 2048 for x in wire.exchanges)
    # The package was installed through Exec on Update, reported with the .update alert type.
    execs = [c for c in wire.received() if isinstance(c, Exec)]
    assert [e.item.target for e in execs] == [f"{FUMO}/Update"]
    report = wire.client_alerts(ALERT_GENERIC)[0]
    assert report.correlator == job.correlator and report.items[0].source == f"{FUMO}/Update"
    assert report.items[0].meta is not None and report.items[0].meta.type.endswith(".update")  # type: ignore[union-attr]


def test_a_large_replace_reaches_the_device_whole_and_its_status_reaches_the_server(lab: Lab) -> None:
    wire = Wire()
    client = lab.device(wire=wire, listen=False, max_msg_size=2048, register=True)
    blob = random.Random(6).randbytes(9_000)
    task = _queue(lab, client.config.dev_id, [
        {"op": "Add", "target": "./Ext/Blob", "format": "bin", "type": "application/octet-stream",
         "data_b64": base64.b64encode(blob).decode()},
        {"op": "Get", "target": "./Ext/Blob?prop=Format"}])
    client.run()
    assert client.tree.value("./Ext/Blob") == blob
    assert _code(lab, task, 0) == 200 and _code(lab, task, 1) == 200
    assert _command(lab, task).results[0]["items"][0]["data"] == "bin"
    adds = [c for c in wire.received() if type(c) is Add]
    assert len(adds) >= 5 and all(a.items[0].more_data for a in adds[:-1]) and not adds[-1].items[0].more_data
    assert [s.code for s in wire.client_statuses() if s.cmd == "Add"] == [213] * (len(adds) - 1) + [200]


@pytest.mark.parametrize("encoding", [Encoding.XML, Encoding.WBXML], ids=["xml", "wbxml"])
def test_client_results_of_a_large_node_travel_in_chunks(tmp_path: Path, release: Release, fleet: Fleet,
                                                         encoding: Encoding) -> None:
    # The server takes messages of 4 KiB: a 20 KB leaf comes back in MoreData chunks, each answered 213.
    lab = start_server(tmp_path, release, fleet, max_msg_size=4096)
    try:
        wire = Wire()
        client = lab.device(wire=wire, listen=False, encoding=encoding)
        big = random.Random(5).randbytes(20_000)
        client.tree.put("./Ext/Big", big, format="bin", type="application/octet-stream")
        # (Known FUMO place: no discovery listing in this session, only the chunks counted below.)
        lab.server.set_capability(MAKE, MODEL, "", DeviceCapability(fumo_uri=FUMO))
        client.run()
        task = _queue(lab, client.config.dev_id, [{"op": "Get", "target": "./Ext/Big"}])
        wire.exchanges.clear()
        client.run()
        assert _code(lab, task, 0) == 200
        items = _command(lab, task).results[0]["items"]
        assert len(items) == 1 and base64.b64decode(items[0]["data_b64"]) == big
        assert items[0]["source"] == "./Ext/Big"
        chunks = [c for c in wire.sent() if isinstance(c, Results) and c.items[0].source == "./Ext/Big"]
        assert len(chunks) >= 5 and all(c.items[0].more_data for c in chunks[:-1])
        assert not chunks[-1].items[0].more_data
        first = chunks[0].items[0].meta
        assert first is not None and first.size == len(big)
        assert all(c.items[0].meta is None or c.items[0].meta.size is None for c in chunks[1:])
        assert all(len(x.body_bytes) <= 4096 for x in wire.exchanges)
        answers = [s for s in wire.server_statuses() if s.cmd == "Results" and s.source_refs == ["./Ext/Big"]]
        assert [s.code for s in answers] == [213] * (len(chunks) - 1)  # no Status for a complete Results
        assert len(wire.server_alerts(1222)) == len(chunks) - 1
    finally:
        lab.running.stop()


def test_endpoints_chunk_and_reassemble_in_both_encodings() -> None:
    blob = random.Random(8).randbytes(7_000)
    for encoding in Encoding:
        sender, receiver = _endpoint(2048, encoding=encoding), _endpoint(2048, encoding=encoding)
        original = Replace([Item(target="./Ext/Big", meta=Meta(format="bin"), data=blob)])
        sender.push(original)
        whole, codes, messages = None, [], 0
        while sender.queue:
            msg, body = sender.compose([])
            assert len(body) <= 2048
            messages += 1
            for cmd in decode(body, encoding).commands:
                done, statuses = receiver.take(cmd, msg.header.msg_id)
                codes += [s.code for s in statuses]
                whole = whole or done
                if done is None:  # the sender's record of the chunk answers for the command it was given
                    assert sender.answered(msg.header.msg_id, cmd.cmd_id) is original
        assert messages >= 4 and codes == [213] * (messages - 1)
        assert isinstance(whole, Replace) and whole.items[0].data == blob and not whole.items[0].more_data


def test_a_results_of_many_items_is_split_between_messages_in_order() -> None:
    # A subtree listing (the FUMO search's Get .?list=Struct) can be larger than the peer's messages: its
    # items go in several Results for the same Get, each message within the limit, none lost or reordered.
    items = [Item(source=f"./Vendor/Node{i}", meta=Meta(format="node", type="urn:x")) for i in range(200)]
    for encoding in Encoding:
        sender = _endpoint(2048, encoding=encoding)
        original = Results(4, items, msg_ref=2)
        sender.push(original)
        got: list[str | None] = []
        messages = 0
        while sender.queue:
            msg, body = sender.compose([])
            assert len(body) <= 2048 and msg.final == (not sender.queue)
            messages += 1
            for cmd in decode(body, encoding).commands:
                assert isinstance(cmd, Results) and (cmd.msg_ref, cmd.cmd_ref) == (2, 4)
                got += [i.source for i in cmd.items]
                assert sender.answered(msg.header.msg_id, cmd.cmd_id) is original
        assert messages >= 3 and got == [i.source for i in items]


def test_a_size_mismatch_is_424() -> None:
    ep = _endpoint()
    assert ep.take(_chunk(b"a" * 100, size=250, more=True), 1)[1][0].code == 213
    assert ep.take(_chunk(b"b" * 100, more=True), 2)[1][0].code == 213
    done, statuses = ep.take(_chunk(b"c" * 10, more=False), 3)  # 210 bytes where 250 were announced
    assert done is None and [s.code for s in statuses] == [424]
    assert statuses[0].target_refs == ["./Ext/Big"]
    # And the exact size is accepted.
    ep.take(_chunk(b"a" * 100, size=110, more=True), 4)
    done, statuses = ep.take(_chunk(b"c" * 10, more=False), 5)
    assert statuses == [] and done is not None and done.items[0].data == b"a" * 100 + b"c" * 10  # type: ignore[union-attr]


def test_a_new_item_before_the_last_chunk_queues_alert_1225() -> None:
    ep = _endpoint()
    ep.take(_chunk(b"a" * 100, size=300, more=True), 1)
    other = Replace([Item(target="./Ext/Other", data="x")])
    done, statuses = ep.take(other, 2)
    assert done is other and statuses == []  # the new command is processed; the unfinished object is dropped
    alert = ep.queue[0]
    assert isinstance(alert, Alert) and alert.data == 1225 and alert.items[0].target == "./Ext/Big"
    # A continuation of the dropped object is not glued onto anything.
    done, statuses = ep.take(_chunk(b"z" * 10, more=False), 3)
    assert done is not None and done.items[0].data == b"z" * 10  # type: ignore[union-attr]


def test_an_object_over_max_obj_size_is_413_and_so_is_the_rest_of_it() -> None:
    ep = _endpoint(max_obj=1000)
    done, statuses = ep.take(_chunk(b"a" * 100, size=5000, more=True), 1)
    assert done is None and [s.code for s in statuses] == [413]
    # The sender may go on sending the refused object's chunks: none of them may be taken as a new object.
    for msg_id in (2, 3):
        done, statuses = ep.take(_chunk(b"b" * 100, more=True), msg_id)
        assert done is None and [s.code for s in statuses] == [413]
    done, statuses = ep.take(_chunk(b"c" * 100, more=False), 4)
    assert done is None and [s.code for s in statuses] == [413]
    # Without a declared size the limit holds on what arrives.
    ep.take(_chunk(b"a" * 600, more=True, target="./Ext/Other"), 5)
    done, statuses = ep.take(_chunk(b"a" * 600, more=True, target="./Ext/Other"), 6)
    assert done is None and [s.code for s in statuses] == [413]
    done, statuses = ep.take(_chunk(b"a" * 10, more=False, target="./Ext/Other"), 7)
    assert done is None and [s.code for s in statuses] == [413]
    # The next object is fine again.
    done, statuses = ep.take(_chunk(b"ok", more=False), 8)
    assert statuses == [] and done is not None


def test_a_sender_stops_sending_an_object_the_peer_refused() -> None:
    sender, receiver = _endpoint(2048), _endpoint(2048, max_obj=3000)
    original = Replace([Item(target="./Ext/Big", meta=Meta(format="bin"), data=bytes(9_000))])
    sender.push(original, Replace([Item(target="./Ext/After", data="next")]))
    msg, body = sender.compose([])
    codes = []
    for cmd in decode(body, Encoding.WBXML).commands:
        _, statuses = receiver.take(cmd, msg.header.msg_id)
        for s in statuses:
            codes.append(s.code)
            sender.refused(sender.answered(msg.header.msg_id, s.cmd_ref), s.code)
    assert codes == [413]
    # What is left to send is the next command, not the rest of the refused object.
    assert [type(c) for c in sender.queue] == [Replace] and sender.queue[0].items[0].target == "./Ext/After"  # type: ignore[union-attr]


def test_inline_delivery_falls_back_to_download_beyond_the_device_max_obj_size(lab: Lab) -> None:
    wire = Wire()
    client = lab.device(wire=wire, max_msg_size=2048)
    client.config.max_obj_size = 4096  # below the 6 KB package: the device cannot take it as one object
    client.run()
    job = lab.update(client, "1.1", delivery="inline")
    assert not any(isinstance(c, Replace) and c.items[0].target == f"{FUMO}/Update/PkgData" for c in wire.received())
    assert [e.item.target for e in wire.received() if isinstance(e, Exec)] == [f"{FUMO}/DownloadAndUpdate"]
    # This emulated device stores no object beyond its MaxObjSize, download or not: FUMO 501.
    assert (job.state, job.result_code) == ("failed", 501)
    assert client.downloaded_bytes == 0  # refused on the GET's headers (its Content-Range), before any byte
    assert client.device.image() == lab.release.images["1.0"]


# -- 6. multi-message packages ---------------------------------------------------------------------

def test_a_package_larger_than_max_msg_size_spreads_over_messages(lab: Lab) -> None:
    wire = Wire()
    client = lab.device(wire=wire, max_msg_size=2048)
    client.run()
    lab.update(client, "1.1", delivery="inline")
    session = [x for x in wire.exchanges if any(isinstance(c, Sequence) for c in (x.response.commands if x.response else []))]
    assert len(session) == 1
    sid = session[0].request.header.session_id
    replies = [x for x in wire.exchanges if x.request.header.session_id == sid]
    # The server's package (the package data, then the Sequence) took several messages; only the last is Final.
    finals = [x.response.final for x in replies if x.response is not None]
    assert finals.count(False) >= 2 and finals[-1] and finals[-2]  # the last: the session's end
    # After each message without Final, the device asked for the next one with Alert 1222.
    for x, nxt in itertools.pairwise(replies):
        assert x.response is not None
        if not x.response.final:
            assert any(isinstance(c, Alert) and c.data == 1222 for c in nxt.request.commands)
            assert nxt.request.header.msg_id == x.request.header.msg_id + 1
    assert [x.request.header.msg_id for x in replies] == list(range(1, len(replies) + 1))
    assert [x.response.header.msg_id for x in replies if x.response] == list(range(1, len(replies) + 1))


def test_many_commands_spread_over_messages_and_all_get_answered(lab: Lab) -> None:
    wire = Wire()
    # (At 1536 bytes: the first reply's statuses and server credentials alone take ~1300 bytes of XML.)
    client = lab.device(wire=wire, listen=False, max_msg_size=1536, register=True)
    names = [f"n{i:02d}" for i in range(40)]
    task = _queue(lab, client.config.dev_id, [
        {"op": "Add", "target": f"./Ext/{n}", "format": "chr", "data": f"value {n}"} for n in names])
    client.run()
    assert [_code(lab, task, i) for i in range(len(names))] == [200] * len(names)
    assert [client.tree.value(f"./Ext/{n}") for n in names] == [f"value {n}" for n in names]
    spread = [x for x in wire.exchanges if x.response is not None and any(type(c) is Add for c in x.response.commands)]
    assert len(spread) >= 4 and [x.response.final for x in spread].count(False) >= 3  # type: ignore[union-attr]
    assert all(len(x.response_bytes) <= 1536 for x in wire.exchanges)
    assert len(wire.client_alerts(1222)) >= 3


# -- 7. tree commands through a real session -------------------------------------------------------

def test_atomic_with_a_failing_command_rolls_back(lab: Lab) -> None:
    client = lab.device(listen=False)
    client.run()
    before = client.tree.snapshot()
    task = _queue(lab, client.config.dev_id, [{"op": "Atomic", "commands": [
        {"op": "Add", "target": "./Ext/Note", "format": "chr", "data": "hello"},
        {"op": "Replace", "target": f"{FUMO}/PkgName", "data": "rolled back"},
        {"op": "Delete", "target": "./DevInfo/DevId"},  # DevInfo is Get-only for servers: 425
    ]}])
    client.run()
    assert _command(lab, task).state == "failed"
    # The Atomic failed (507), the commands that had worked were rolled back (216), the culprit keeps its code.
    assert [_code(lab, task, i) for i in range(4)] == [507, 216, 216, 425]
    assert not client.tree.exists("./Ext/Note")
    assert client.tree.value(f"{FUMO}/PkgName") == ""
    assert client.tree.value("./DevInfo/DevId") == client.config.dev_id
    assert client.tree.snapshot() == before


def test_atomic_that_succeeds_is_applied(lab: Lab) -> None:
    client = lab.device(listen=False, register=True)
    task = _queue(lab, client.config.dev_id, [{"op": "Atomic", "commands": [
        {"op": "Add", "target": "./Ext/Note", "format": "chr", "data": "hello"},
        {"op": "Replace", "target": f"{FUMO}/PkgName", "data": "kept"},
    ]}])
    client.run()
    assert [_code(lab, task, i) for i in range(3)] == [200, 200, 200]
    assert client.tree.value("./Ext/Note") == "hello" and client.tree.value(f"{FUMO}/PkgName") == "kept"


def test_a_declined_confirmation_stops_the_sequence_and_declines_the_job(lab: Lab) -> None:
    wire = Wire()
    client = lab.device(ui=ScriptedUi(accept=False), wire=wire)
    client.run()
    job = lab.update(client, "1.1")
    assert (job.state, job.result_code) == ("declined", 401)
    assert client.device.version == "1.0" and client.device.image() == lab.release.images["1.0"]
    statuses = {s.cmd: s.code for s in wire.client_statuses() if s.cmd in ("Sequence", "Alert", "Replace", "Exec")}
    assert statuses == {"Sequence": 200, "Alert": 304, "Replace": 215, "Exec": 215}
    assert client.tree.value(f"{FUMO}/DownloadAndUpdate/PkgURL") == ""  # the Replace was not executed
    assert client.download is None and client.reports == []
    assert len(_shown(client)) == 1


def test_get_list_structdata_returns_the_subtree_with_data(lab: Lab) -> None:
    client = lab.device(listen=False, register=True)
    task = _queue(lab, client.config.dev_id, [{"op": "Get", "target": "./DevInfo?list=StructData"},
                                              {"op": "Get", "target": "./DevDetail?list=Struct"}])
    client.run()
    assert [_code(lab, task, 0), _code(lab, task, 1)] == [200, 200]
    results = _command(lab, task).results
    data = {i["source"]: i.get("data") for i in results[0]["items"]}
    assert data["./DevInfo/DevId"] == client.config.dev_id and data["./DevInfo/Man"] == "Acme"
    assert not data["./DevInfo"]
    struct = {i["source"]: i for i in results[1]["items"]}
    assert "./DevDetail/FwV" in struct and "./DevDetail/URI/MaxDepth" in struct
    assert all(not i.get("data") for i in struct.values())  # structure only
    assert struct["./DevDetail/URI"]["format"] == "node"


def test_the_server_walks_the_tree_when_the_client_cannot_list(lab: Lab) -> None:
    wire = Wire()
    client = lab.device(version="1.1", wire=wire, listen=False)
    client.config.structured_get = False
    client.run()
    statuses = [s for s in wire.client_statuses() if s.cmd == "Get"]
    assert statuses[0].code == 406 and statuses[0].target_refs == ["./DevDetail?list=StructData"]
    # Then node by node: every leaf of DevDetail was asked for on its own.
    gets = [c.items[0].target for c in wire.received() if isinstance(c, Get)]
    assert {"./DevDetail/FwV", "./DevDetail/LrgObj", "./DevDetail/URI/MaxDepth"} <= set(gets)
    row = lab.dev_row(client.config.dev_id)
    assert row.version == "1.1" and row.large_objects


# -- 8. an interrupted download resumes ------------------------------------------------------------

def test_an_interrupted_download_resumes_with_a_range_request(lab: Lab) -> None:
    wire = Wire()
    client = lab.device(wire=wire)
    client.run()
    size = len(lab.release.p10_11)
    client.download_cut_after = 2500
    job = lab.update(client, "1.1")
    assert (job.state, job.result_code) == ("succeeded", 200)
    assert client.downloaded_bytes == size  # nothing was fetched twice
    gets = [r for r in wire.raw_requests if r.method == "GET" and "/packages/" in r.url.path]
    assert [r.headers.get("range") for r in gets] == ["bytes=0-", "bytes=2500-"]
    assert [r.method for r in wire.raw_requests if "/packages/" in r.url.path] == ["GET", "GET"]  # (no HEAD: the GET gives the size)
    assert client.device.image() == lab.release.images["1.1"]


# -- 9. a power cut during the install -------------------------------------------------------------

@pytest.mark.parametrize("cut_after", [0, 3, 11])
def test_a_power_cut_during_the_install_resumes_from_the_journal(lab: Lab, cut_after: int) -> None:
    client = lab.device()
    client.run()
    flash = client.device.flash
    before = flash.operations
    flash.arm(cut_after)
    job = lab.update(client, "1.1")
    assert not flash.armed  # the cut struck (the device disarms only on the reboot after one)
    assert flash.operations > before + cut_after
    assert (job.state, job.result_code) == ("succeeded", 200)
    assert client.device.image() == lab.release.images["1.1"] and client.device.version == "1.1"
    assert client.last_outcome is not None and client.last_outcome.ok


# -- 10. a package secured for another operator's SIM ----------------------------------------------

def test_a_package_secured_for_another_operator_is_refused(tmp_path: Path, release: Release, fleet: Fleet) -> None:
    lab = start_server(tmp_path, release, fleet)
    try:
        v10, v11 = release.images["1.0"], release.images["1.1"]
        lab.server.publish(package.pack(v10, v11, release.key, make=MAKE, model=MODEL, from_version="1.0",
                                        to_version="1.1", in_place=True, block_size=BLOCK,
                                        validation=b"operator A".ljust(16, b"\0")))
        client = lab.device(sim_card=secured_sim(b"operator B"))
        client.run()
        wire = Wire()
        client.http = wire.client()
        flash_before = bytes(client.device.flash.data)
        job = lab.update(client, "1.1")
        assert (job.state, job.result_code) == ("failed", 404)
        report = wire.client_alerts(ALERT_GENERIC)[0]
        assert report.items[0].data == "404" and report.correlator == job.correlator
        assert report.items[0].meta is not None and report.items[0].meta.mark == "critical"
        assert bytes(client.device.flash.data) == flash_before  # not one byte written
        assert client.device.version == "1.0" and lab.dev_row(client.config.dev_id).version == "1.0"
        assert client.fumo_state == FumoState.UPDATE_FAILED_NO_DATA
    finally:
        lab.running.stop()


# -- 11. a chain of updates ------------------------------------------------------------------------

def test_a_chain_of_two_updates_the_second_delivered_while_the_first_is_reported(tmp_path: Path, release: Release,
                                                                                 fleet: Fleet) -> None:
    lab = start_server(tmp_path, release, fleet)
    lab.publish_chain(direct=True)
    try:
        wire = Wire()
        client = lab.device(wire=wire)
        client.run()
        first = lab.server.assign(client.config.dev_id, "1.2")
        lab.server.notify(client.config.dev_id)
        lab.fleet.wait()
        assert lab.fleet.errors(client.config.dev_id) == []
        jobs = lab.jobs(client.config.dev_id)
        assert [(j.state, j.result_code, j.goal_version) for j in jobs] == [("succeeded", 200, "1.2")] * 2
        assert jobs[0].id == first.id
        assert client.device.version == "1.2" and client.device.image() == release.images["1.2"]
        assert lab.dev_row(client.config.dev_id).version == "1.2"
        # The session that reported the first update delivered the second.
        reporting = [x for x in wire.exchanges
                     if any(isinstance(c, Alert) and c.data == ALERT_GENERIC and c.correlator == jobs[0].correlator
                            for c in x.request.commands)]
        assert reporting
        sid = reporting[0].request.header.session_id
        execs = [c for x in wire.exchanges if x.request.header.session_id == sid and x.response is not None
                 for c in walk(x.response.commands) if isinstance(c, Exec)]
        assert [e.correlator for e in execs] == [jobs[1].correlator]
        # Each step took the cheap package, not the dear direct one.
        urls = {str(r.url) for r in wire.raw_requests if r.method == "GET" and "/packages/" in r.url.path}
        assert len(urls) == 2
        assert sum(1 for e in wire.client_alerts(ALERT_GENERIC) if e.items[0].data == "200") == 2
    finally:
        lab.running.stop()


# -- 12. device- and web-initiated software requests -----------------------------------------------

def test_a_device_asks_for_software_and_gets_its_choice(tmp_path: Path, release: Release, fleet: Fleet) -> None:
    lab = start_server(tmp_path, release, fleet)
    lab.publish_chain(direct=True)
    try:
        client = lab.device(listen=False)
        client.run()
        offered: list[list[tuple[str, str]]] = []

        def choose(offers: list[tuple[str, str]]) -> int | None:
            offered.append(offers)
            return next(i for i, (entry, _) in enumerate(offers) if entry == "to:1.1")

        client.request_software(choose)
        assert [entry for entry, _ in offered[0]] == ["to:1.1", "to:1.2"]
        # The 1.2 offer costs the chain through 1.1, not the direct package.
        assert f"({len(release.p10_11) + len(release.p11_12)} bytes)" in offered[0][1][1]
        assert client.device.version == "1.1" and client.device.image() == release.images["1.1"]
        jobs = lab.jobs(client.config.dev_id)
        assert [(j.goal_version, j.state) for j in jobs] == [("1.1", "succeeded")]
    finally:
        lab.running.stop()


def test_a_device_that_declines_every_offer_gets_no_job(lab: Lab) -> None:
    client = lab.device(listen=False)
    client.run()
    client.request_software(lambda offers: None)
    assert [e for e, _ in client.offers] == ["to:1.1", "to:1.2"]
    assert lab.jobs(client.config.dev_id) == [] and client.device.version == "1.0"


def test_the_web_portal_lists_versions_and_a_selection_triggers_the_session(lab: Lab) -> None:
    client = lab.device(listen=False)
    client.run()
    dev_id = client.config.dev_id
    page = httpx.get(f"{lab.url}/portal/{dev_id}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "version 1.1" in page.text and "version 1.2" in page.text
    assert f"/portal/{dev_id}/select?version=1.1" in page.text
    log = client.browse(f"{lab.url}/portal/{dev_id}/select?version=1.1")
    assert log is not None and not log.aborted
    assert client.device.version == "1.1" and client.device.image() == lab.release.images["1.1"]
    assert [(j.goal_version, j.state) for j in lab.jobs(dev_id)] == [("1.1", "succeeded")]
    assert any(s.initiator == "web" and s.state == "completed" for s in lab.sessions(dev_id))
    # Now at 1.1, the portal offers only 1.2; an unknown version is a 404 and no job.
    assert "version 1.1" not in httpx.get(f"{lab.url}/portal/{dev_id}").text
    assert httpx.get(f"{lab.url}/portal/{dev_id}/select?version=9.9").status_code == 404
    assert client.browse(f"{lab.url}/portal/{dev_id}") is None  # an ordinary page opens no session


def test_selecting_the_running_version_or_nothing_is_refused_not_a_crash(lab: Lab) -> None:
    client = lab.device(listen=False)
    client.run()
    dev_id = client.config.dev_id
    raw = Raw.factory(lab.dm_url, dev_id, session_id="79")
    nonce = base64.b64decode(lab.dev_row(dev_id).client_nonce)
    select = [Alert(1226, [Item(source=FUMO, meta=Meta(type="com.fotadelta.software.select", format="chr"),
                                data=f"to:{v}")]) for v in ("1.0", "", "7.7")]
    reply = raw.post([*raw.package1(), *select], cred=raw.md5(nonce))
    assert [s.code for s in reply.commands if isinstance(s, Status) and s.cmd == "Alert"][1:] == [404, 404, 404]
    assert lab.jobs(dev_id) == []
    for version in ("1.0", ""):
        r = httpx.get(f"{lab.url}/portal/{dev_id}/select", params={"version": version})
        assert r.status_code == 404 and "Traceback" not in r.text
    with pytest.raises(ValueError):
        lab.server.assign(dev_id, "1.0")
    assert lab.jobs(dev_id) == []


# -- 13. connection retries ------------------------------------------------------------------------

def test_a_client_retries_until_the_server_comes_up(tmp_path: Path, release: Release, fleet: Fleet) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = DmServer(ServerConfig(tmp_path / "srv", url))
    started: list[Running] = []
    timer = threading.Timer(0.3, lambda: started.append(serve_in_thread(create_app(server), port=port)))
    lab = Lab(server, None, url, release, fleet, tmp_path)  # type: ignore[arg-type]
    client = lab.device(listen=False)
    client.config.retries, client.config.backoff = 8, 0.05  # waits of 0.05, 0.1, 0.2, ... 6.4 s at most
    timer.start()
    try:
        log = client.run()
        assert started, "the session succeeded before the server was started"
        assert log.messages >= 2
        with server.store.tx() as s:
            row = s.get(DeviceRow, client.config.dev_id)
            assert row is not None and row.version == "1.0"
    finally:
        timer.join()
        for r in started:
            r.stop()


def test_a_client_gives_up_after_its_retries(tmp_path: Path, release: Release, fleet: Fleet) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    lab = Lab(None, None, url, release, fleet, tmp_path)  # type: ignore[arg-type]
    client = lab.device(listen=False)
    client.config.retries, client.config.backoff = 2, 0.01
    with pytest.raises(SessionError, match="gave up after 3 attempts"):
        client.run()
    assert len(client.sessions) == 3


def test_a_report_the_server_does_not_take_waits_for_the_next_session(lab: Lab) -> None:
    client = lab.device(listen=False)
    client.run()
    job = lab.server.assign(client.config.dev_id, "1.1")
    # On the way back, the server's 200 for the device's report becomes a 500.
    report_status = re.compile(rb"(<Cmd>Alert</Cmd>(?:(?!</Status>).)*?<SourceRef>\./FUMO/Firmware/DownloadAndUpdate"
                               rb"</SourceRef>(?:(?!</Status>).)*?<Data>)200(</Data>)", re.DOTALL)
    proxy = _tampering_proxy(lab, lambda n, body: report_status.sub(rb"\g<1>500\2", body))
    try:
        client.config.server_url = f"http://127.0.0.1:{proxy.port}/dm"
        done = threading.Event()

        def notified() -> None:
            client.handle_notification(lab.server.notification(client.config.dev_id))
            done.set()
        worker = threading.Thread(target=notified, daemon=True)
        worker.start()
        worker.join(60)
        assert done.is_set(), "the device kept reporting"
    finally:
        proxy.stop()
    assert client.device.version == "1.1" and len(client.reports) == 1
    # The next session delivers it.
    client.config.server_url = lab.dm_url
    client.run()
    assert client.reports == [] and lab.job(job.id).state == "succeeded"


# -- 14. a server restart, and sessions that end without a word ------------------------------------

def test_a_server_restarted_mid_session_goes_on_with_it(tmp_path: Path, release: Release, fleet: Fleet) -> None:
    port = _free_port()
    lab = start_server(tmp_path, release, fleet)
    lab.publish_chain()
    lab.running.stop()
    lab = Lab(lab.server, serve_in_thread(create_app(lab.server), port=port), f"http://127.0.0.1:{port}",
              release, fleet, tmp_path)
    lab.server.config.public_url = lab.url
    client = lab.device(listen=False, server_url=f"http://127.0.0.1:{port}/dm")
    dev_id = client.config.dev_id
    client.run()
    job = lab.server.assign(dev_id, "1.1")
    # A session driven by hand: package 1 with the digest over the nonce the server gave last.
    raw = Raw.factory(f"{lab.url}/dm", dev_id, session_id="ABC")
    nonce = base64.b64decode(lab.dev_row(dev_id).client_nonce)
    reply = raw.post(raw.package1(), cred=raw.md5(nonce))
    assert hdr_status(reply).code == 212 and any(isinstance(c, Sequence) for c in reply.commands)
    assert lab.job(job.id).state == "sent"
    lab.running.stop()

    # A new server on the same data directory (and port): the session lives in the database, so the
    # new server takes the device's next message where the old one left off.
    server = DmServer(ServerConfig(tmp_path / "srv", lab.url), push=HttpPush())
    running = serve_in_thread(create_app(server), port=port)
    try:
        answers = [Status(1, 0, "SyncHdr", 212)] + [Status(1, c.cmd_id, type(c).__name__, 200)
                                                     for c in walk(reply.commands) if not isinstance(c, Status)]
        reply = raw.post(answers)  # type: ignore[arg-type]
        assert hdr_status(reply).code == 200 and reply.final
        assert not any(isinstance(c, Alert) and c.data == 1223 for c in reply.commands)
        with server.store.tx() as s:
            row = s.get(JobRow, job.id)
            assert row is not None and row.state == "accepted"
            rows = s.scalars(select(SessionRow).where(SessionRow.dev_id == dev_id,
                                                      SessionRow.session_id == "ABC")).all()
            assert [(r.state, r.messages) for r in rows] == [("completed", 2)]
    finally:
        running.stop()


def test_a_session_the_device_abandons_gives_its_job_back(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    client = lab.device(listen=False)
    client.run()
    dev_id = client.config.dev_id
    job = lab.server.assign(dev_id, "1.1")
    raw = Raw.factory(lab.dm_url, dev_id, session_id="7B")
    reply = raw.post(raw.package1(), cred=raw.md5(base64.b64decode(lab.dev_row(dev_id).client_nonce)))
    assert any(isinstance(c, Sequence) for c in reply.commands) and lab.job(job.id).state == "sent"
    # The device goes silent. Once the session is forgotten, the job must be deliverable again.
    monkeypatch.setattr(engine, "SESSION_IDLE", 0.2)
    time.sleep(0.4)
    assert lab.server.sweep() == 1  # (every server process sweeps now and then; the scheduler does too)
    assert lab.job(job.id).state == "pending"
    assert [(s.state, s.note) for s in lab.sessions(dev_id) if s.session_id == "7B"] == [
        ("failed", "the device went silent")]
    client.client_nonce = base64.b64decode(lab.dev_row(dev_id).client_nonce)  # what the raw session left
    client.run()
    assert lab.job(job.id).state == "succeeded" and client.device.version == "1.1"
    abandoned = [s for s in lab.sessions(dev_id) if s.session_id == "7B"]
    assert [s.state for s in abandoned] == ["failed"]


# -- 15. malformed protocol input over HTTP --------------------------------------------------------

def test_garbage_and_wrong_types_get_http_errors_without_internals(lab: Lab) -> None:
    dm = lab.dm_url
    for body, ctype in ((b"\x00\x01garbage", "application/vnd.syncml.dm+wbxml"),
                        (b"<SyncML><oops", "application/vnd.syncml.dm+xml"),
                        (b"<SyncML xmlns='SYNCML:SYNCML1.2'/>", "application/vnd.syncml.dm+xml"),
                        (b"", "application/vnd.syncml.dm+xml"),
                        (Raw.factory(dm).message([Alert(1201)]).header.session_id.encode(), "application/vnd.syncml.dm+xml")):
        r = httpx.post(dm, content=body, headers={"content-type": ctype})
        assert r.status_code == 400, (body, r.text)
        assert "Traceback" not in r.text and 'File "' not in r.text
    raw = Raw.factory(dm)
    doc = encode(raw.message(raw.package1()), Encoding.XML)
    for ctype in ("text/xml", "application/json", "application/vnd.syncml.notification", ""):
        r = httpx.post(dm, content=doc, headers={"content-type": ctype})
        assert r.status_code == 415 and "Traceback" not in r.text
    # Numbers that only look like numbers, and numbers too long for int(): still a 400.
    for bad in ("<CmdID>\u00b2</CmdID>", "<CmdID>" + "9" * 5000 + "</CmdID>"):
        r = httpx.post(dm, content=doc.replace(b"<CmdID>1</CmdID>", bad.encode(), 1),
                       headers={"content-type": "application/vnd.syncml.dm+xml"})
        assert r.status_code == 400 and "Traceback" not in r.text


def test_an_oversized_request_is_refused_with_413(lab: Lab) -> None:
    big = b"<" * (2 << 20)
    r = httpx.post(lab.dm_url, content=big, headers={"content-type": "application/vnd.syncml.dm+xml"})
    assert r.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds on what arrives
        for _ in range(64):
            yield b"<" * 65536
    r = httpx.post(lab.dm_url, content=chunks(), headers={"content-type": "application/vnd.syncml.dm+xml"})
    assert r.status_code == 413
    # The server is fine afterwards.
    client = lab.device(listen=False)
    client.run()
    assert lab.dev_row(client.config.dev_id).version == "1.0"


def test_a_command_a_client_may_not_send_is_refused_with_405(lab: Lab) -> None:
    client = lab.device(listen=False)
    client.run()
    raw = Raw.factory(lab.dm_url, client.config.dev_id, session_id="77")
    nonce = base64.b64decode(lab.dev_row(raw.dev_id).client_nonce)
    reply = raw.post([*raw.package1(), Exec(Item(target="./Some/Node")),
                      Add([Item(target="./Server/Node", data="x")]), Get([Item(target="./Server")])],
                     cred=raw.md5(nonce))
    codes = {s.cmd: s.code for s in reply.commands if isinstance(s, Status)}
    assert codes == {"SyncHdr": 212, "Alert": 200, "Replace": 200, "Exec": 405, "Add": 405, "Get": 405}


def test_a_generic_alert_with_a_result_that_is_not_a_number_is_415(lab: Lab) -> None:
    client = lab.device(listen=False)
    client.run()
    raw = Raw.factory(lab.dm_url, client.config.dev_id, session_id="78")
    nonce = base64.b64decode(lab.dev_row(raw.dev_id).client_nonce)
    fumo = Meta(type=FUMO_DU, format="int")
    reply = raw.post([*raw.package1(), *[Alert(1226, [Item(source=f"{FUMO}/DownloadAndUpdate", meta=fumo, data=d)],
                                               correlator="nope") for d in ("\u00b2", "9" * 5000, "-1", "")]],
                     cred=raw.md5(nonce))
    assert [s.code for s in reply.commands if isinstance(s, Status) and s.cmd == "Alert"][1:] == [415] * 4


def test_a_device_cannot_report_for_another_devices_job(lab: Lab) -> None:
    victim, other = lab.device(listen=False), lab.device(listen=False)
    victim.run()
    other.run()
    job = lab.server.assign(victim.config.dev_id, "1.1")
    raw = Raw.factory(lab.dm_url, other.config.dev_id, session_id="7A")
    nonce = base64.b64decode(lab.dev_row(raw.dev_id).client_nonce)
    forged = Alert(1226, [Item(source=f"{FUMO}/DownloadAndUpdate", meta=Meta(type=FUMO_DU, format="int"), data="200")],
                   correlator=job.correlator)
    raw.post([*raw.package1(), forged], cred=raw.md5(nonce))
    assert lab.job(job.id).state == "pending"
    assert lab.dev_row(other.config.dev_id).version == "1.0" and lab.dev_row(victim.config.dev_id).version == "1.0"


def test_an_unknown_device_without_factory_enrolment_gets_401(tmp_path: Path, release: Release, fleet: Fleet) -> None:
    lab = start_server(tmp_path, release, fleet, factory_secret=None)
    try:
        raw = Raw.factory(lab.dm_url)
        reply = raw.post(raw.package1(), cred=raw.md5(bytes(4)))
        assert hdr_status(reply).code == 401
        assert any(isinstance(c, Alert) and c.data == 1223 for c in reply.commands)
        assert not any(isinstance(c, (Get, Sequence)) for c in reply.commands)
        with lab.server.store.tx() as s:
            assert s.get(DeviceRow, raw.dev_id) is None
        # A device the operator registered is served.
        client = lab.device(listen=False, register=True)
        client.run()
        assert lab.dev_row(client.config.dev_id).version == "1.0"
    finally:
        lab.running.stop()
