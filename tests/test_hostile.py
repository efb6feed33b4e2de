"""Hostile input: one test per attack class of issue 11, each against the real parts (HTTP over
loopback, SQLite, signed packages, the C patcher on emulated flash). docs/security.md says what each
defence is; the numbers in the test names are the issue's rows."""

from __future__ import annotations

import base64
import logging
import struct
import time
import tracemalloc
from pathlib import Path

import httpx
import pytest
import zstandard
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from dm_fixtures import MAKE, MODEL, Lab, Raw, Release, hdr_status, start_server
from sqlalchemy import func, select

import fotadelta
from fotadelta import _core, agent, inplace, package, sim
from fotadelta.delta.codec import Codec
from fotadelta.delta.format import Kind, Patch, Stream
from fotadelta.dm import snmp, wbxml
from fotadelta.dm.client import FUMO, ClientConfig, retry_delays
from fotadelta.dm.codec import Encoding, decode, encode
from fotadelta.dm.element import CodecError
from fotadelta.dm.model import Alert, Item, Meta, Replace, Sequence, Status
from fotadelta.dm.model import _int as _number
from fotadelta.emulator import Fleet
from fotadelta.errors import PackageError, PatchError
from fotadelta.inplace.format import MAX_DECODER_WORK, InplaceHeader, PayloadCodec
from fotadelta.package import signing
from fotadelta.server import DmServer, ServerConfig
from fotadelta.server.accounts import Account
from fotadelta.server.limits import Limits, SlidingCounts, Throttle
from fotadelta.server.push import HttpPush, PushError, PushPolicy
from fotadelta.server.store import DeviceRow, EventRow, JobRow, SessionRow

FUMO_DU = "org.openmobilealliance.dm.firmwareupdate.downloadandupdate"
WBXML = Encoding.WBXML.content_type


def _counts(server: DmServer) -> dict[str, int]:
    with server.store.tx() as s:
        return {t.__tablename__: s.scalar(select(func.count()).select_from(t)) or 0
                for t in (DeviceRow, SessionRow, JobRow, EventRow)}


def _started(lab: Lab, dev_id: str | None = None, sid: str = "5E") -> tuple[Raw, object]:
    """A device that has registered, and a session of it opened by hand (its RespURI followed)."""
    client = lab.device(listen=False, dev_id=dev_id)
    client.run()
    raw = Raw.factory(lab.dm_url, client.config.dev_id, session_id=sid)
    reply = raw.post(raw.package1(), cred=raw.md5(base64.b64decode(lab.dev_row(raw.dev_id).client_nonce)))
    assert hdr_status(reply).code == 212
    return raw, reply


# -- 1. WBXML string-table amplification ----------------------------------------------------------

def _amplified(dev_id_text_refs: int, string: int = 32 * 1024 - 1) -> bytes:
    """A WBXML message whose SyncHdr Source is one string-table string referenced over and over."""
    template = Raw.factory("http://server/dm", "@@DEVID@@", encoding=Encoding.WBXML)
    body = encode(template.message(template.package1()), Encoding.WBXML)
    table = b"A" * string + b"\0"
    header = bytes([0x02, 0xA4, 0x01, 0x6A])
    assert body.startswith(header + b"\x00")  # (no string table)
    refs = b"\x83\x00" * dev_id_text_refs  # STR_T, index 0
    at = body.index(b"\x03@@DEVID@@\x00")
    body = body[:at] + refs + body[at + len(b"\x03@@DEVID@@\x00"):]
    return header + _mb(len(table)) + table + body[len(header) + 1:]


def _mb(n: int) -> bytes:
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def test_row1_wbxml_string_table_amplification_is_refused_with_413_and_stores_nothing(lab: Lab) -> None:
    message = _amplified(300)  # 33 KB on the wire, 9.8 MB decoded
    assert len(message) < lab.server.config.max_msg_size
    before = _counts(lab.server)
    r = httpx.post(lab.dm_url, content=message, headers={"content-type": WBXML})
    assert r.status_code == 413 and "Traceback" not in r.text
    assert _counts(lab.server) == before
    with pytest.raises(CodecError, match="decodes to more than"):
        wbxml.decode(message, max_size=64 * 1024)
    # Within the decoded limit the same construction still decodes (the limit is on output, not form).
    assert wbxml.decode(_amplified(2, string=100), max_size=64 * 1024).tag == "SyncML"


# -- 2. the fleet API -------------------------------------------------------------------------------

def test_row2_the_fleet_api_takes_the_admin_token_and_shows_no_secrets(tmp_path: Path, release: Release,
                                                                         fleet: Fleet) -> None:
    lab = start_server(tmp_path, release, fleet, admin_token="s3cret")
    try:
        lab.device(listen=False).run()
        assert httpx.get(f"{lab.url}/api/v1/devices").status_code == 401
        assert httpx.get(f"{lab.url}/api/v1/devices", headers={"authorization": "Bearer wrong"}).status_code == 401
        r = httpx.get(f"{lab.url}/api/v1/devices", headers={"authorization": "Bearer s3cret"})
        assert r.status_code == 200
        device = r.json()[0]
        assert not {"password", "server_password", "client_nonce", "server_nonce", "user"} & set(device)
    finally:
        lab.running.stop()


def test_accounts_and_capabilities_take_the_admin_token_and_show_no_secrets(tmp_path: Path, release: Release,
                                                                           fleet: Fleet) -> None:
    # An account is a device's credentials: whoever could make one could speak as any DevId.
    lab = start_server(tmp_path, release, fleet, admin_token="s3cret")
    try:
        account = {"client_auth": "basic", "client_user": "u", "client_password": "p4ss", "server_auth": ["md5"],
                   "server_password": "srv-pw", "server_nonce": "", "snmp": {"community": "c0m"}}
        url = f"{lab.url}/api/v1"
        before = _counts(lab.server)
        for headers in ({}, {"authorization": "Bearer wrong"}):
            assert httpx.put(f"{url}/devices/IMEI:7/account", json=account, headers=headers).status_code == 401
            assert httpx.get(f"{url}/accounts", headers=headers).status_code == 401
            assert httpx.delete(f"{url}/devices/IMEI:7", headers=headers).status_code == 401
            assert httpx.put(f"{url}/capabilities/{MAKE}/{MODEL}", json={"sequence": False},
                             headers=headers).status_code == 401
        assert _counts(lab.server) == before and lab.server.capabilities() == []
        operator = {"authorization": "Bearer s3cret"}
        created = httpx.put(f"{url}/devices/IMEI:7/account", json=account, headers=operator)
        assert created.status_code == 200 and created.json()["created"] is True
        shown = httpx.get(f"{url}/devices/IMEI:7/account", headers=operator).text
        assert '"client_user":"u"' in shown.replace(" ", "")
        listed = httpx.get(f"{url}/accounts", headers=operator).text
        device = httpx.get(f"{url}/devices/IMEI:7", headers=operator).text
        for text in (shown, listed, device):
            assert all(secret not in text for secret in ("p4ss", "srv-pw", "c0m", "nonce"))
    finally:
        lab.running.stop()


# -- 3. a session continued by someone who knows its DevId and SessionID ----------------------------

def test_row3_a_session_goes_on_only_at_its_resp_uri(lab: Lab) -> None:
    raw, reply = _started(lab)
    dev_id = raw.dev_id
    assert reply.header.resp_uri and reply.header.resp_uri.startswith(f"{lab.dm_url}/")  # type: ignore[attr-defined]
    job = lab.server.assign(dev_id, "1.1")
    push_before = lab.dev_row(dev_id).push_url
    # The attacker knows DevId and SessionID, and the job's correlator, but not the RespURI.
    attacker = Raw(lab.dm_url, dev_id, session_id=raw.session_id, msg_id=1)
    forged = [Replace([Item(source="./DevInfo/Ext/PushAddr", data="http://127.0.0.1:9/evil")]),
              Alert(1226, [Item(source=f"{FUMO}/DownloadAndUpdate", meta=Meta(type=FUMO_DU, format="int"),
                                data="200")], correlator=job.correlator)]
    for url in (lab.dm_url, f"{lab.dm_url}/made-up-token"):
        attacker.url = url
        answer = attacker.post(forged)
        assert hdr_status(answer).code == 506
        assert any(isinstance(c, Alert) and c.data == 1223 for c in answer.commands)
    assert lab.dev_row(dev_id).push_url == push_before
    assert lab.job(job.id).state == "pending" and lab.dev_row(dev_id).version == "1.0"
    # The device itself goes on at its RespURI.
    answer = raw.post([Status(1, 0, "SyncHdr", 212)] + [Status(1, c.cmd_id, type(c).__name__, 200)
                                                         for c in reply.commands  # type: ignore[attr-defined]
                                                         if not isinstance(c, Status)])
    assert hdr_status(answer).code == 200


# -- 4. the portal's selection ---------------------------------------------------------------------

def test_row4_a_portal_selection_plans_nothing_until_the_device_redeems_it(lab: Lab) -> None:
    client = lab.device(listen=False)
    client.run()
    dev_id = client.config.dev_id
    before = _counts(lab.server)
    url = f"{lab.url}/portal/{dev_id}/select?version=1.1"
    pkg0 = httpx.get(url).content
    assert _counts(lab.server) == before  # no job, no session, no event
    # Whoever fetched it pushes it to the device: a pushed trigger's token is not the user's choice.
    client.handle_notification(pkg0)
    assert lab.jobs(dev_id) == [] and client.device.version == "1.0"
    # The device's own browser hands it over: the device's authenticated session redeems it, once.
    assert client.browse(url) is not None
    assert [(j.goal_version, j.state) for j in lab.jobs(dev_id)] == [("1.1", "succeeded")]
    token = lab.server.keyring.portal_token(dev_id, "1.2")
    keyring, store = lab.server.keyring, lab.server.store
    with store.tx() as s:
        assert keyring.redeem(s, dev_id + "0", token) is None  # another device's
    with store.tx() as s:
        assert keyring.redeem(s, dev_id, token) == "1.2"
    # Once, in whichever server process: the redemption is a row of the shared database.
    again = DmServer(lab.server.config, upkeep=False)
    with again.store.tx() as s:
        assert again.keyring.redeem(s, dev_id, token) is None


# -- 5. anti-rollback ------------------------------------------------------------------------------

def test_row5_a_signed_rollback_is_refused_before_any_flash_write(release: Release) -> None:
    images = release.images
    old_full = package.pack(b"", images["1.0"], release.key, make=MAKE, model=MODEL, from_version="*",
                            to_version="1.0", full_image=True, security_version=1)
    device = agent.Device.with_image(images["1.2"], make=MAKE, model=MODEL, version="1.2", trust=release.trust,
                                     nvm=sim.handoff(sim.Sim()), block_size=4096)
    device.security_version = 3
    outcome = agent.install(device, old_full)
    assert outcome.code == agent.FumoResult.NOT_ACCEPTABLE and "security version" in outcome.message
    assert device.flash.operations == 0 and device.version == "1.2"
    # Signed as an allowed downgrade, it installs (and the device now runs security version 1).
    allowed = package.pack(b"", images["1.0"], release.key, make=MAKE, model=MODEL, from_version="*",
                           to_version="1.0", full_image=True, security_version=1, allow_downgrade=True)
    assert agent.install(device, allowed).ok and device.security_version == 1
    assert device.image() == images["1.0"]
    shown = package.parse(allowed).to_dict()
    assert (shown["security_version"], shown["allow_downgrade"]) == (1, True)


# -- 6. decompression before the signature check ---------------------------------------------------

def _zero_stream(n: int) -> bytes:
    params = zstandard.ZstdCompressionParameters.from_level(3, format=zstandard.FORMAT_ZSTD1_MAGICLESS,
                                                            write_checksum=0, write_content_size=0, write_dict_id=0)
    c = zstandard.ZstdCompressor(compression_params=params).compressobj()
    block = bytes(1 << 20)
    return b"".join(c.compress(block) for _ in range(n >> 20)) + c.flush()


def test_row6_verify_checks_the_signature_before_the_payload_and_decoding_is_bounded(release: Release) -> None:
    big = 256 << 20
    stream = _zero_stream(big)  # 256 MiB of zeros in a few KB
    patch = Patch(Kind.FULL, 0, big, bytes(8), bytes(16), (Stream(Codec.ZSTD, big, stream),)).encode()
    genuine = package.pack(b"", b"x", release.key, make=MAKE, model=MODEL, from_version="*", to_version="9",
                           full_image=True)
    m = package.parse(genuine).manifest
    # The same manifest with the 256 MiB patch as a plain payload, and a signature that does not verify.
    fixed = package._FIXED.pack(package.MAGIC, package.FORMAT_VERSION, m.content_type, package.PatchKind.PLAIN, 0,
                                m.validation, m.source_sha256, m.target_sha256, 0, big, 0, 0, 0)
    texts = b"".join(bytes((len(t),)) + t.encode() for t in (MAKE, MODEL, "8", "9", "firmware"))
    forged = fixed + texts + struct.pack("<I", len(patch)) + patch + bytes((1,)) + bytes(8) + \
        struct.pack("<H", 64) + bytes(64)
    tracemalloc.start()
    try:
        with pytest.raises(PackageError, match="does not verify"):
            package.verify(forged, release.trust)
        assert package.parse(forged).manifest.target_size == big  # (headers only: nothing decompressed)
        # Unsigned plain patches decode only as far as they declare: a stream that says 1 MiB stops there.
        lying = Patch(Kind.FULL, 0, 1 << 20, bytes(8), bytes(16), (Stream(Codec.ZSTD, 1 << 20, stream),)).encode()
        with pytest.raises(PatchError):
            fotadelta.apply(b"", lying)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 48 << 20, f"{peak >> 20} MiB allocated"  # the attack needs 256 MiB


# -- 7. a crash between the result and the next step; retries that outlast a restart ---------------

def test_row7_the_result_and_the_next_step_are_one_transaction(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    client = lab.device(listen=False)
    client.run()
    dev_id = client.config.dev_id
    first = lab.server.assign(dev_id, "1.2")  # a chain: 1.0 -> 1.1 -> 1.2

    def crash(*args: object, **kw: object) -> object:
        raise RuntimeError("the server died while planning")
    monkeypatch.setattr(DmServer, "plan_update", crash)
    client.config.retries = 0
    with pytest.raises(Exception):
        client.handle_notification(lab.server.notification(dev_id))
    assert client.device.version == "1.1" and len(client.reports) == 1
    # Neither the result nor a plan was kept: the device's report is still owed, the job still open.
    assert lab.job(first.id).state == "accepted" and lab.dev_row(dev_id).version == "1.0"
    monkeypatch.undo()
    client.config.retries = 2
    client.run()  # the report goes through, and the next step is delivered in the same session
    assert [j.state for j in lab.jobs(dev_id)] == ["succeeded", "succeeded"] and client.device.version == "1.2"


def test_row7_a_restart_replans_a_chain_left_without_its_next_step(tmp_path: Path, release: Release,
                                                                    fleet: Fleet) -> None:
    lab = start_server(tmp_path, release, fleet)
    lab.publish_chain()
    client = lab.device(listen=False)
    client.run()
    dev_id = client.config.dev_id
    job = lab.server.assign(dev_id, "1.2")
    lab.running.stop()
    # What a crash between "job succeeded" and planning the next step left behind before the fix.
    with lab.server.store.tx() as s:
        row = s.get(JobRow, job.id)
        assert row is not None
        row.state, row.result_code = "succeeded", 200
        dev = s.get(DeviceRow, dev_id)
        assert dev is not None
        dev.version = "1.1"
    restarted = DmServer(ServerConfig(tmp_path / "srv", lab.url))
    assert restarted.replanned == 1
    with restarted.store.tx() as s:
        jobs = s.scalars(select(JobRow).where(JobRow.dev_id == dev_id).order_by(JobRow.id)).all()
        assert [(j.state, j.goal_version) for j in jobs] == [("succeeded", "1.2"), ("pending", "1.2")]
    assert DmServer(ServerConfig(tmp_path / "srv", lab.url)).replanned == 0  # once is enough


def test_row7_device_retries_outlast_a_server_restart() -> None:
    config = ClientConfig("http://x/dm", "IMEI:1", "u", "p", "s", "sp")
    import random
    totals = [sum(retry_delays(config, random.Random(seed))) for seed in range(50)]
    assert all(20.0 <= t <= 46.0 for t in totals), (min(totals), max(totals))  # tens of seconds in all
    assert len(set(totals)) == 50  # jittered: devices cut off together do not come back together
    assert max(max(retry_delays(config, random.Random(s))) for s in range(50)) <= config.backoff_cap


# -- 8. enrolment before proof; 0 rows from strangers ----------------------------------------------

def test_row8_strangers_create_no_devices_sessions_jobs_or_events(tmp_path: Path, release: Release,
                                                                  fleet: Fleet) -> None:
    lab = start_server(tmp_path, release, fleet, limits=Limits(unauthenticated_per_minute=10_000))
    try:
        lab.publish_chain()
        before = _counts(lab.server)
        for i in range(300):
            raw = Raw.factory(lab.dm_url)
            kind = i % 3
            if kind == 0:
                reply = raw.post(raw.package1())  # no credentials
            elif kind == 1:
                reply = raw.post(raw.package1(), cred=raw.md5(b"not the nonce"))
            else:
                raw.password = "guessed"
                reply = raw.post(raw.package1(), cred=raw.md5(bytes(4)))
            assert hdr_status(reply).code in (401, 407)
            assert reply.header.resp_uri is None and not any(not isinstance(c, Status) for c in reply.commands)
        assert _counts(lab.server) == before
        # A device that proves its factory credentials is enrolled, and only then.
        lab.device(listen=False).run()
        assert _counts(lab.server)["devices"] == before["devices"] + 1
    finally:
        lab.running.stop()


def test_the_unauthenticated_allowance_slides_so_no_turn_of_a_window_doubles_it() -> None:
    now = [1000.0]
    t = Throttle(5, clock=lambda: now[0])
    for _ in range(5):
        assert t.allowed("10.0.0.1")
        t.failed("10.0.0.1")
        now[0] += 11.0  # the last failure at 1044 s, the first at 1000 s
    assert not t.allowed("10.0.0.1") and t.allowed("10.0.0.2")  # per caller
    assert t.retry_after("10.0.0.1") == 5  # the first failure leaves the minute at 1060 s; now is 1055 s
    now[0] = 1059.9  # a fixed window would have turned at 1020, 1080, ...: a sliding one still counts all five
    assert not t.allowed("10.0.0.1")
    now[0] = 1060.0
    assert t.allowed("10.0.0.1")  # one back, not five
    t.failed("10.0.0.1")
    assert not t.allowed("10.0.0.1")


def test_the_unauthenticated_allowance_remembers_a_bounded_number_of_callers() -> None:
    counts = SlidingCounts(60.0, max_keys=100)
    for i in range(250):
        counts.add(f"10.0.{i // 256}.{i % 256}", 3, now=float(i))
    assert len(counts) == 100
    assert counts.wait("10.0.0.249", 1, now=250.0) > 0 and counts.wait("10.0.0.0", 1, now=250.0) == 0
    for _ in range(1000):  # a caller keeps only the times that can still refuse it
        counts.add("10.0.0.249", 3, now=250.0)
    assert counts.wait("10.0.0.249", 3, now=309.0) == pytest.approx(1.0)


def test_row8_a_caller_over_its_unauthenticated_allowance_gets_429(tmp_path: Path, release: Release,
                                                                    fleet: Fleet) -> None:
    lab = start_server(tmp_path, release, fleet, limits=Limits(unauthenticated_per_minute=5))
    try:
        codes = [httpx.post(lab.dm_url, content=b"garbage", headers={"content-type": WBXML}).status_code
                 for _ in range(7)]
        assert codes == [400] * 5 + [429] * 2
        r = httpx.post(lab.dm_url, content=b"garbage", headers={"content-type": WBXML})
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60
        assert httpx.get(f"{lab.url}/portal/IMEI:1").status_code == 429
        # A live session's token vouches for it: a session opened before goes on from the same address.
        lab.server.throttle.per_minute = 10_000
        raw, reply = _started(lab)
        lab.server.throttle.per_minute = 0
        answer = raw.post([Status(1, 0, "SyncHdr", 212)] + [Status(1, c.cmd_id, type(c).__name__, 200)
                                                             for c in reply.commands  # type: ignore[attr-defined]
                                                             if not isinstance(c, Status)])
        assert hdr_status(answer).code == 200
        assert httpx.post(lab.dm_url, content=b"x", headers={"content-type": WBXML}).status_code == 429
    finally:
        lab.running.stop()


def test_a_device_keeps_at_most_its_limit_of_sessions_heard(tmp_path: Path, release: Release, fleet: Fleet) -> None:
    """Finished sessions stay heard a while (their RespURI answers); a device that opens session after session
    keeps only the newest max_sessions_per_device of them heard, the older ones forgotten (token and state gone)."""
    lab = start_server(tmp_path, release, fleet, limits=Limits(max_sessions_per_device=3))
    try:
        client = lab.device(listen=False)
        for n in range(1, 7):
            client.run()
            rows = lab.sessions(client.config.dev_id)
            assert [r.state for r in rows] == ["completed"] * n
            heard = [r.id for r in rows if r.token is not None]
            assert heard == [r.id for r in rows][-3:]  # (the newest three, this one included)
            assert all(r.live is None for r in rows if r.token is None)
    finally:
        lab.running.stop()


def test_snmp_traps_from_strangers_create_nothing_and_share_the_callers_allowance(tmp_path: Path, release: Release,
                                                                                fleet: Fleet) -> None:
    lab = start_server(tmp_path, release, fleet, snmp_port=0, limits=Limits(unauthenticated_per_minute=4,
                                                                           max_dev_id=32))
    try:
        lab.server.put_account(Account("IMEI:9", "md5", "u", "p", ("md5",), "s", snmp=snmp.V2c("pub-9")))
        traps = lab.server.traps
        assert traps is not None
        before = _counts(lab.server)
        strangers: list[tuple[snmp.Credentials, str]] = [
            (snmp.V2c("public"), "IMEI:9"),  # a guessed community
            (snmp.V2c("pub-9"), "IMEI:8"),  # a device's community, naming another device
            (snmp.V3("nobody", "authkey-99", "privkey-99", "8000000001020399"), "IMEI:9"),  # an unknown user
            (snmp.V2c("pub-9"), "IMEI:9" + "9" * 60),  # a DevId over the server's limit
        ]
        for creds, dev_id in strangers:
            snmp.send_request("127.0.0.1", traps.port, creds, dev_id, snmp.Action.LIST)
        # Over the allowance now: even a good trap is not read, and HTTP from the same address gets 429.
        snmp.send_request("127.0.0.1", traps.port, snmp.V2c("pub-9"), "IMEI:9", snmp.Action.FETCH, "1.1")
        deadline = time.monotonic() + 10
        while traps.dropped + traps.refused + traps.throttled < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (traps.dropped, traps.refused, traps.throttled) == (2, 2, 1)
        assert _counts(lab.server) == before
        assert httpx.post(lab.dm_url, content=b"x", headers={"content-type": WBXML}).status_code == 429
    finally:
        lab.server.close()
        lab.running.stop()


# -- 9. sizes declared by patch headers ------------------------------------------------------------

def _inplace_header(payload: bytes = b"", **fields: int) -> InplaceHeader:
    values = dict(codec=PayloadCodec.STORED, block_size=4096, park_slots=0, old_size=4096, new_size=4096,
                  control_raw=0, literals_raw=0, diffs_raw=0, work_need=4096, arch=0, moves=0)
    values.update(fields)
    h = InplaceHeader(values["codec"], values["block_size"], values["park_slots"], values["old_size"],  # type: ignore[arg-type]
                      values["new_size"], (values["control_raw"], values["literals_raw"], values["diffs_raw"]),
                      len(payload), values["work_need"], values["arch"], values["moves"], bytes(8), bytes(8), b"")
    return h


def test_row9_patch_headers_cannot_make_the_host_allocate_what_they_declare() -> None:
    largest = _core.lz_work_size(*[_core.LZ_WINDOW_LOG_MAX] * _core.LZ_MAX_LANES)
    assert MAX_DECODER_WORK == largest  # the bound the header check uses is the C decoder's own
    old = bytes(4096)
    for fields in ({"work_need": 1 << 30}, {"new_size": 0xFFFF_F000}, {"control_raw": 1 << 30},
                   {"codec": PayloadCodec.LZ, "control_raw": 1 << 20, "work_need": 8192},
                   {"codec": PayloadCodec.LZ, "literals_raw": 1 << 20, "work_need": 8192},
                   {"moves": 1 << 20}):
        header = _inplace_header(**fields)
        patch = header.seal(b"")
        assert len(patch) == header.header_len
        with pytest.raises(PatchError):
            InplaceHeader.parse(patch)
        with pytest.raises(PatchError):
            inplace.apply(old, patch)
    # A new image the payload could build (its control lane is long enough) but whose slot and spare blocks
    # pass 4 GiB: the patcher's flash addresses are 32 bits (found by the py_inplace fuzz target).
    patch = _inplace_header(bytes(1 << 10), codec=PayloadCodec.LZMA, block_size=1024, new_size=0xFFFF_FFFF,
                            control_raw=1 << 23, work_need=1024).seal(bytes(1 << 10))
    with pytest.raises(PatchError, match="32-bit"):
        InplaceHeader.parse(patch)
    with pytest.raises(PatchError, match="32-bit"):
        inplace.apply(bytes(4096), patch)
    # A plain patch declaring an 80 GB image is a PatchError, not a MemoryError.
    plain = Patch(Kind.FULL, 0, 80 << 30, bytes(8), bytes(16), (Stream(Codec.STORED, 80 << 30, b""),)).encode()
    with pytest.raises(PatchError):
        fotadelta.apply(b"", plain)


# -- 10. 500s on malformed requests ----------------------------------------------------------------

def test_row10_an_unknown_xml_encoding_and_a_huge_package_id_are_4xx(lab: Lab) -> None:
    raw = Raw.factory(lab.dm_url)
    doc = encode(raw.message(raw.package1()), Encoding.XML).replace(b'encoding="UTF-8"', b'encoding="UTN-8"')
    r = httpx.post(lab.dm_url, content=doc, headers={"content-type": Encoding.XML.content_type})
    assert r.status_code == 400 and "Traceback" not in r.text
    for ident in ("9" * 20, "0", str(1 << 63)):
        r = httpx.get(f"{lab.url}/packages/{ident}")
        assert r.status_code == 404, (ident, r.status_code)


# -- 11. a larger old image than the header's ------------------------------------------------------

def test_row11_in_place_apply_refuses_an_old_image_of_another_size(release: Release) -> None:
    patch = package.parse(release.p10_11).payload
    old = release.images["1.0"]
    for wrong in (old + bytes(10_000), old[:-1]):
        with pytest.raises(PatchError, match="source image"):
            inplace.apply(wrong, patch)
    assert inplace.apply(old, patch) == release.images["1.1"]


# -- 12. ECDSA malleability ------------------------------------------------------------------------

def test_row12_ecdsa_signatures_are_low_s_only() -> None:
    key = signing.generate(signing.Algorithm.ECDSA_P256_SHA256)
    trust = signing.TrustStore.of([key.public_key()])
    made = package.pack(b"", b"image", key, make=MAKE, model=MODEL, from_version="*", to_version="1",
                        full_image=True)
    pkg = package.verify(made, trust)
    r, s = decode_dss_signature(pkg.signature)
    assert s <= signing.P256_ORDER // 2  # what sign() makes
    high = encode_dss_signature(r, signing.P256_ORDER - s)
    twin = made[:len(pkg.signed_bytes)] + struct.pack("<H", len(high)) + high
    with pytest.raises(PackageError, match="signature"):
        package.verify(twin, trust)
    for _ in range(20):  # every signature made is the low one
        sig = signing.sign(key, b"message")
        assert decode_dss_signature(sig)[1] <= signing.P256_ORDER // 2
        assert trust.verify(signing.Algorithm.ECDSA_P256_SHA256, signing.key_id(key.public_key()), sig, b"message")


# -- 13. SSRF through the push address -------------------------------------------------------------

@pytest.mark.parametrize("url", ["http://10.0.0.1/push", "http://169.254.169.254/latest", "http://192.168.1.1/",
                                 "http://[fd00::1]/", "file:///etc/passwd", "gopher://127.0.0.1/",
                                 "http://user@127.0.0.1/", "http://" + "a" * 300])
def test_row13_the_default_push_policy_refuses_addresses_off_loopback(url: str) -> None:
    assert PushPolicy().refusal(url) is not None  # (IP literals and schemes: no lookup, no traffic)


def test_row13_a_device_cannot_point_the_server_at_a_host_outside_the_policy(tmp_path: Path, release: Release,
                                                                            fleet: Fleet) -> None:
    # Only 127.0.0.2 may be pushed to; the emulator's listener is at 127.0.0.1, "inside" in the attack.
    policy = PushPolicy(networks=("127.0.0.2/32",))
    lab = start_server(tmp_path, release, fleet, push_policy=policy)
    lab.server.push = HttpPush(policy=policy)
    try:
        lab.publish_chain()
        client = lab.device()
        client.run()
        dev_id = client.config.dev_id
        assert lab.dev_row(dev_id).push_url == ""  # not taken
        with lab.server.store.tx() as s:
            row = s.get(DeviceRow, dev_id)
            assert row is not None
            row.push_url = fleet.push_url(dev_id)  # (as if stored before the policy existed)
        lab.server.assign(dev_id, "1.1")
        with pytest.raises(PushError, match="outside the allowed networks"):
            lab.server.notify(dev_id)
        fleet.wait()
        assert client.sessions and len(client.sessions) == 1  # nothing reached the listener
    finally:
        lab.running.stop()


# -- 14. a stranger's Alert 1201 on a known session id ---------------------------------------------

def test_row14_a_stranger_reusing_a_session_id_does_not_end_the_session(lab: Lab) -> None:
    raw, reply = _started(lab, sid="6A")
    job = lab.server.assign(raw.dev_id, "1.1")
    stranger = Raw(lab.dm_url, raw.dev_id, session_id="6A")
    answer = stranger.post(stranger.package1())
    assert hdr_status(answer).code == 407
    # The device's session is untouched: it goes on, and the job is delivered in it.
    answer = raw.post([Status(1, 0, "SyncHdr", 212)] + [Status(1, c.cmd_id, type(c).__name__, 200)
                                                         for c in reply.commands  # type: ignore[attr-defined]
                                                         if not isinstance(c, Status)])
    assert hdr_status(answer).code == 200 and any(isinstance(c, Sequence) for c in answer.commands)
    assert lab.job(job.id).state == "sent"


# -- the limits ------------------------------------------------------------------------------------

def test_each_limit_is_answered_with_its_status_and_logged_once(tmp_path: Path, release: Release, fleet: Fleet,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    limits = Limits(max_items=20, max_uri=64, max_dev_id=40, max_decoded=8 * 1024)
    lab = start_server(tmp_path, release, fleet, limits=limits)
    try:
        cases = {
            414: Raw.factory(lab.dm_url, "IMEI:" + "1" * 60).message([Alert(1201)]),
            413: Raw.factory(lab.dm_url).message([Alert(1201), Replace([Item(source=f"./Ext/{i}", data="x")
                                                                        for i in range(25)])]),
        }
        long_uri = Raw.factory(lab.dm_url).message([Alert(1201), Replace([Item(source="./" + "u" * 80, data="x")])])
        big_text = Raw.factory(lab.dm_url).message([Alert(1201), Replace([Item(source="./a", data="x" * 9000)])])
        with caplog.at_level(logging.WARNING, logger="fotadelta.server.limits"):
            for _ in range(3):
                for code, msg in cases.items():
                    for encoding in Encoding:
                        r = httpx.post(lab.dm_url, content=encode(msg, encoding),
                                       headers={"content-type": encoding.content_type})
                        assert r.status_code == code, (code, encoding, r.text)
                assert httpx.post(lab.dm_url, content=encode(long_uri, Encoding.XML),
                                  headers={"content-type": Encoding.XML.content_type}).status_code == 414
                assert httpx.post(lab.dm_url, content=encode(big_text, Encoding.WBXML),
                                  headers={"content-type": WBXML}).status_code == 413
        kinds = [r.getMessage().split(" from ")[0] for r in caplog.records]
        assert sorted(kinds) == ["refused message limits", "refused message size"]  # once a minute each
        assert _counts(lab.server)["devices"] == 0
    finally:
        lab.running.stop()


def test_a_dev_info_value_longer_than_the_store_keeps_is_413(lab: Lab) -> None:
    raw, _ = _started(lab, sid="5F")
    raw2 = Raw.factory(lab.dm_url, raw.dev_id, session_id="60")
    reply = raw2.post([Alert(1201), Replace([Item(source="./DevInfo/Man", data="M" * 65)])],
                      cred=raw2.md5(base64.b64decode(lab.dev_row(raw.dev_id).client_nonce)))
    assert next(s.code for s in reply.commands if isinstance(s, Status) and s.cmd == "Replace") == 413
    assert lab.dev_row(raw.dev_id).make == MAKE


def test_the_server_key_is_private_and_kept(tmp_path: Path) -> None:
    server = DmServer(ServerConfig(tmp_path / "srv", "http://127.0.0.1:1"))
    key_file = tmp_path / "srv" / "server.key"
    assert key_file.stat().st_mode & 0o777 == 0o600 and len(key_file.read_bytes()) == 32
    token = server.keyring.portal_token("IMEI:1", "1.1")
    again = DmServer(ServerConfig(tmp_path / "srv", "http://127.0.0.1:1"))
    with again.store.tx() as s:
        assert again.keyring.redeem(s, "IMEI:1", token) == "1.1"  # the same key after a restart


def test_found_by_fuzzing_a_number_followed_by_a_control_character_is_malformed_not_a_crash(lab: Lab) -> None:
    # tests/fuzz/fuzz_py.py wbxml: "1201\x1f" passed the number check (str.strip() removes U+001F) and then
    # made int() raise a plain ValueError, which the server answered with HTTP 500.
    raw = Raw.factory(lab.dm_url, encoding=Encoding.WBXML)
    doc = encode(raw.message(raw.package1()), Encoding.WBXML).replace(b"\x031201\x00", b"\x031201\x1f\x00", 1)
    r = httpx.post(lab.dm_url, content=doc, headers={"content-type": WBXML})
    assert r.status_code == 200
    assert hdr_status(decode(r.content, Encoding.WBXML)).code == 407  # read as Alert 1201, challenged
    for text in ("1201\x1f", "\x1c7\x1d", " 12 "):
        assert _number(text, "a number") == int(text.strip())
