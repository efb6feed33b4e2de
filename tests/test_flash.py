"""The flash emulator: geometry rules, wear counters, torn operations."""

from __future__ import annotations

import pytest

from fotadelta.flash import Flash, FlashError, Geometry, PowerLoss


def _flash() -> Flash:
    return Flash(Geometry(size=4 * 1024, block_size=1024, write_size=8))


def test_erase_and_write_follow_the_geometry() -> None:
    f = _flash()
    assert f.read(0, 16) == b"\xff" * 16
    f.write(8, b"A" * 16)
    assert f.read(8, 16) == b"A" * 16
    with pytest.raises(FlashError, match="granularity"):
        f.write(3, b"x" * 8)
    with pytest.raises(FlashError, match="not erased"):
        f.write(8, b"B" * 8)
    with pytest.raises(FlashError, match="block aligned"):
        f.erase(512)
    with pytest.raises(FlashError, match="outside"):
        f.read(4096, 1)
    f.erase(0)
    assert f.read(0, 1024) == b"\xff" * 1024


def test_wear_counters() -> None:
    f = _flash()
    f.erase(1024)
    f.erase(1024)
    f.write(1024, b"\0" * 8)
    assert f.erase_counts == [0, 2, 0, 0]
    assert f.write_counts == [0, 1, 0, 0]
    assert f.operations == 3


def test_torn_erase_leaves_a_prefix_erased() -> None:
    f = _flash()
    f.program(0, b"\0" * 1024)
    f.arm(0, seed=1)
    with pytest.raises(PowerLoss):
        f.erase(0)
    data = f.read(0, 1024)
    erased = len(data) - len(data.lstrip(b"\xff"))
    assert data == b"\xff" * erased + b"\0" * (1024 - erased)
    assert erased < 1024


def test_torn_write_leaves_a_prefix_written() -> None:
    f = _flash()
    f.write(0, b"\x11" * 8)
    f.arm(0, seed=3)
    with pytest.raises(PowerLoss):
        f.write(64, b"\x22" * 64)
    written = f.read(64, 64)
    n = len(written) - len(written.lstrip(b"\x22"))
    assert written == b"\x22" * n + b"\xff" * (64 - n)
    f.arm(None)
    f.write(512, b"\x33" * 8)  # power is back
    assert f.read(512, 8) == b"\x33" * 8


def test_bad_geometry_is_rejected() -> None:
    with pytest.raises(ValueError):
        Geometry(size=4096, block_size=1000)
    with pytest.raises(ValueError):
        Geometry(size=4096, block_size=1024, write_size=3)
    with pytest.raises(ValueError):
        Geometry(size=5000, block_size=1024)
