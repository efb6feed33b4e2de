"""Session state sealed by one release and read by the next (a rolling upgrade of the workers)."""

from __future__ import annotations

import hmac
import pickle
import secrets

import pytest

from fotadelta.dm.codec import Encoding
from fotadelta.dm.model import DM_1_1, Alert, Exec, Item, Replace
from fotadelta.dm.session import Endpoint
from fotadelta.server import livestate
from fotadelta.server.keyring import Mac
from fotadelta.server.engine import Delivery


def _delivery() -> Delivery:
    return Delivery("./FUMO", [], Replace([Item(target="./FUMO/Update/PkgData", data="x")]),
                    Exec([Item(target="./FUMO/Update")]), Alert(1100), asks=False, search=True, package_id=7)


def test_a_delivery_sealed_before_it_kept_its_package_reads_none() -> None:
    key = Mac(secrets.token_bytes(32))
    old = _delivery()
    del old.__dict__["package_id"]  # (what a release before package_id pickled)
    back = livestate.unseal(livestate.seal(old, key), key, Delivery)
    assert back.package_id is None
    assert (back.fumo_uri, back.search, back.asks) == ("./FUMO", True, False)


def test_a_delivery_round_trips_and_a_changed_byte_is_refused() -> None:
    key = Mac(secrets.token_bytes(32))
    blob = livestate.seal(_delivery(), key)
    assert livestate.unseal(blob, key, Delivery).package_id == 7
    with pytest.raises(livestate.StateError):
        livestate.unseal(blob[:-1] + bytes([blob[-1] ^ 1]), key, Delivery)


def test_recent_gives_back_what_it_sealed_once_and_unseals_after() -> None:
    states = livestate.Recent(secrets.token_bytes(32), 8)
    sealed = _delivery()
    blob = states.seal("t1", sealed)
    assert states.unseal("t1", blob, Delivery) is sealed
    again = states.unseal("t1", blob, Delivery)  # (given once: the taker changes it)
    assert again is not sealed and again == sealed


def test_recent_unseals_bytes_another_process_sealed_and_refuses_a_changed_byte() -> None:
    key = secrets.token_bytes(32)
    here, there = livestate.Recent(key, 8), livestate.Recent(key, 8)
    here.seal("t1", _delivery())
    moved = _delivery()
    moved.stage = "exec"  # (the session's next message went to the other process)
    blob = there.seal("t1", moved)
    assert here.unseal("t1", blob, Delivery).stage == "exec"
    here.seal("t1", moved)
    with pytest.raises(livestate.StateError):
        here.unseal("t1", blob[:-1] + bytes([blob[-1] ^ 1]), Delivery)


def test_recent_keeps_at_most_its_size_dropping_the_oldest() -> None:
    states = livestate.Recent(secrets.token_bytes(32), 2)
    sealed = {t: _delivery() for t in "abc"}
    blobs = {t: states.seal(t, d) for t, d in sealed.items()}
    assert [states.unseal(t, blobs[t], Delivery) is sealed[t] for t in "abc"] == [False, True, True]


def test_a_dm_1_1_session_state_keeps_the_module_protocol() -> None:
    key = Mac(secrets.token_bytes(32))
    ep = Endpoint(session_id="1", local="http://s/dm", remote="IMEI:1", encoding=Encoding.XML, max_msg_size=16384,
                  max_obj_size=65536, protocol=DM_1_1)
    assert livestate.unseal(livestate.seal(ep, key), key, Endpoint).protocol is DM_1_1  # (the engine tests `is`)


def test_a_state_sealed_by_the_one_shot_hmac_of_earlier_releases_unseals() -> None:
    raw = secrets.token_bytes(32)
    body = pickle.dumps(_delivery(), protocol=pickle.HIGHEST_PROTOCOL)
    assert livestate.unseal(hmac.digest(raw, body, "sha256") + body, Mac(raw), Delivery).package_id == 7
