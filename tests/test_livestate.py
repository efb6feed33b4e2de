"""Session state sealed by one release and read by the next (a rolling upgrade of the workers)."""

from __future__ import annotations

import secrets

import pytest

from fotadelta.dm.model import Alert, Exec, Item, Replace
from fotadelta.server import livestate
from fotadelta.server.engine import Delivery


def _delivery() -> Delivery:
    return Delivery("./FUMO", [], Replace([Item(target="./FUMO/Update/PkgData", data="x")]),
                    Exec([Item(target="./FUMO/Update")]), Alert(1100), asks=False, search=True, package_id=7)


def test_a_delivery_sealed_before_it_kept_its_package_reads_none() -> None:
    key = secrets.token_bytes(32)
    old = _delivery()
    del old.__dict__["package_id"]  # (what a release before package_id pickled)
    back = livestate.unseal(livestate.seal(old, key), key, Delivery)
    assert back.package_id is None
    assert (back.fumo_uri, back.search, back.asks) == ("./FUMO", True, False)


def test_a_delivery_round_trips_and_a_changed_byte_is_refused() -> None:
    key = secrets.token_bytes(32)
    blob = livestate.seal(_delivery(), key)
    assert livestate.unseal(blob, key, Delivery).package_id == 7
    with pytest.raises(livestate.StateError):
        livestate.unseal(blob[:-1] + bytes([blob[-1] ^ 1]), key, Delivery)
