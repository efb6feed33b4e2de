"""Damaged patches: every truncation and byte change must raise PatchError (or, where the
byte provably does not matter, still give exactly the new image); never another exception."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
import zstandard
from support import check_mutant, firmware_like, harmless_positions, layout, mutate, spliced

import fotadelta
from fotadelta import PatchError, _core, delta
from fotadelta.delta.codec import Codec, decompress
from fotadelta.delta.format import (Container, Kind, Layer, Patch, Stream, encode_varint, source_fingerprint,
                                    target_digest)

XORS = (0x01, 0x02, 0x10, 0x80, 0xFF, 0x5A)


def small_pair() -> tuple[bytes, bytes]:
    """A pair whose delta is a small patch with stored (uncompressed) streams, so that
    every stream byte is read by the C core directly."""
    r = random.Random(7)
    old = firmware_like(r, 3000)
    new = bytearray(old)
    new[100:100] = b"NEW CODE"
    new[1000] ^= 0x40
    new[2000:2004] = b"\x01\x02\x03\x04"
    del new[2500:2520]
    return old, bytes(new)


@pytest.fixture(scope="module")
def small() -> tuple[bytes, bytes, bytes]:
    old, new = small_pair()
    patch = fotadelta.diff(old, new)
    assert fotadelta.info(patch).kind == "delta"
    assert fotadelta.apply(old, patch) == new
    return old, new, patch


@pytest.fixture(scope="module")
def large() -> tuple[bytes, bytes, bytes]:
    """A patch whose streams are compressed."""
    r = random.Random(11)
    old = firmware_like(r, 200_000)
    new = mutate(r, old, 150)
    patch = fotadelta.diff(old, new)
    assert fotadelta.info(patch).kind == "delta"
    assert any(s.codec != "stored" for s in fotadelta.info(patch).streams)
    return old, new, patch


@pytest.fixture(scope="module")
def stored_new() -> tuple[bytes, bytes, bytes]:
    """A patch longer than _ONE_CALL_CODED, nearly all of it new bytes stored as they are."""
    r = random.Random(19)
    old = firmware_like(r, 60_000)
    new = mutate(r, old, 20) + r.randbytes(delta._ONE_CALL_CODED)
    patch = fotadelta.diff(old, new)
    assert fotadelta.info(patch).kind == "delta" and len(patch) > delta._ONE_CALL_CODED
    return old, new, patch


def _coded_bytes(patch: bytes) -> int:
    return sum(s.stored_bytes for s in fotadelta.info(patch).streams if s.codec != "stored")


@pytest.fixture(scope="module")
def full() -> tuple[bytes, bytes, bytes]:
    r = random.Random(13)
    old, new = r.randbytes(2000), firmware_like(r, 3000)
    patch = fotadelta.diff(old, new)
    assert fotadelta.info(patch).kind == "full"
    return old, new, patch


@pytest.fixture(scope="module")
def referenced() -> tuple[bytes, bytes, bytes]:
    r = random.Random(17)
    old = firmware_like(r, 12_000)
    new = spliced(r, old, 10_000)
    patch = fotadelta.diff(old, new)
    assert fotadelta.info(patch).kind == "referenced"
    return old, new, patch


def test_small_patch_uses_stored_streams(small: tuple[bytes, bytes, bytes]) -> None:
    _old, _new, patch = small
    assert all(s.codec == 0 for s in layout(patch).streams)
    assert len(patch) < 400


@pytest.mark.parametrize("which", ["small", "large", "full", "referenced"])
def test_every_truncation(which: str, request: pytest.FixtureRequest) -> None:
    old, _new, patch = request.getfixturevalue(which)
    lengths = range(len(patch)) if len(patch) < 2000 else sorted(
        set(range(200)) | set(range(0, len(patch), 7)) | set(range(len(patch) - 200, len(patch))))
    for n in lengths:
        with pytest.raises(PatchError):
            fotadelta.apply(old, patch[:n])
        with pytest.raises(PatchError):
            fotadelta.info(patch[:n])


def test_every_byte_change_small(small: tuple[bytes, bytes, bytes]) -> None:
    old, new, patch = small
    harmless = harmless_positions(patch)
    outcomes = {"error": 0, "ok": 0}
    for pos in range(len(patch)):
        for x in XORS:
            mutant = bytearray(patch)
            mutant[pos] ^= x
            outcomes[check_mutant(old, new, bytes(mutant), pos, harmless)] += 1
    assert outcomes["error"] > 0.9 * len(patch) * len(XORS)


@pytest.mark.parametrize("which", ["small", "large", "stored_new"])
def test_one_call_apply_matches_the_steps(which: str, request: pytest.FixtureRequest) -> None:
    """Deltas of small images with few coded bytes are applied in one call to the core
    (_core.apply_delta); every damaged patch gives what the step-by-step apply gives: the same
    image, or a PatchError with the same message."""
    old, new, patch = request.getfixturevalue(which)
    assert _coded_bytes(patch) < delta._ONE_CALL_CODED and len(old) < delta._ONE_CALL_IMAGE
    assert _core.apply_delta(old, patch, decompress, source_fingerprint, target_digest,
                             delta._ONE_CALL_CODED) == new
    rng = random.Random(5)
    positions = range(len(patch)) if len(patch) < 2000 else rng.sample(range(len(patch)), 1500)
    errors = 0
    for pos in positions:
        mutant = bytearray(patch)
        mutant[pos] ^= rng.choice(XORS)
        outcomes = []
        for run in (fotadelta.apply, delta._apply_steps):
            try:
                outcomes.append(run(old, bytes(mutant)))
            except PatchError as exc:
                outcomes.append(str(exc))
        assert outcomes[0] == outcomes[1], f"offset {pos}: {outcomes[0]!r:.80} != {outcomes[1]!r:.80}"
        errors += isinstance(outcomes[0], str)
    assert errors > 0.5 * len(positions)
    assert fotadelta.apply(old, patch) == delta._apply_steps(old, patch) == new


def test_coded_streams_of_the_limit_or_more_are_left_to_the_steps(large: tuple[bytes, bytes, bytes]) -> None:
    """The steps decode long coded streams on threads; stored bytes do not count."""
    old, _new, patch = large
    coded = _coded_bytes(patch)
    assert _core.apply_delta(old, patch, decompress, source_fingerprint, target_digest, coded) is None
    assert _core.apply_delta(old, patch, decompress, source_fingerprint, target_digest, coded + 1) is not None


@pytest.mark.parametrize("which", ["full", "referenced"])
def test_every_byte_change_full(which: str, request: pytest.FixtureRequest) -> None:
    old, new, patch = request.getfixturevalue(which)
    harmless = harmless_positions(patch)
    errors = 0
    for pos in range(len(patch)):
        for x in (0x01, 0x80, 0xFF):
            mutant = bytearray(patch)
            mutant[pos] ^= x
            errors += check_mutant(old, new, bytes(mutant), pos, harmless) == "error"
    assert errors > 0


def test_dense_byte_changes_large(large: tuple[bytes, bytes, bytes]) -> None:
    old, new, patch = large
    harmless = harmless_positions(patch)
    lay = layout(patch)
    header_end = lay.streams[0].start
    positions = sorted(set(range(header_end + 1)) | set(range(0, len(patch), 5))
                       | {s.codec_at for s in lay.streams} | {len(patch) - 1})
    errors = 0
    for pos in positions:
        for x in (0x01, 0x80, 0xFF):
            mutant = bytearray(patch)
            mutant[pos] ^= x
            errors += check_mutant(old, new, bytes(mutant), pos, harmless) == "error"
    assert errors > len(positions)


def test_random_multi_byte_damage(large: tuple[bytes, bytes, bytes]) -> None:
    old, new, patch = large
    r = random.Random(3)
    errors = 0
    for _ in range(300):
        mutant = bytearray(patch)
        for _ in range(r.randrange(2, 20)):
            mutant[r.randrange(len(mutant))] = r.randrange(256)
        try:
            out = fotadelta.apply(old, bytes(mutant))
        except PatchError:
            errors += 1
        else:
            assert out == new
    assert errors > 250


def test_byte_changes_streaming(large: tuple[bytes, bytes, bytes], tmp_path: Path) -> None:
    """The file API decodes the streams incrementally: damage must fail there too, leaving no
    output file behind."""
    old, new, patch = large
    harmless = harmless_positions(patch)
    (tmp_path / "old").write_bytes(old)
    r = random.Random(5)
    positions = sorted(set(range(80)) | {r.randrange(len(patch)) for _ in range(150)})
    errors = 0
    for pos in positions:
        mutant = bytearray(patch)
        mutant[pos] ^= 0xFF
        (tmp_path / "patch").write_bytes(mutant)
        try:
            fotadelta.apply_file(tmp_path / "old", tmp_path / "patch", tmp_path / "out")
        except PatchError:
            errors += 1
            assert not (tmp_path / "out").exists()
        else:
            assert pos in harmless
            assert (tmp_path / "out").read_bytes() == new
            (tmp_path / "out").unlink()
        assert not list(tmp_path.glob("*.part"))
    assert errors > len(positions) // 2


def test_wrong_source_same_size(small: tuple[bytes, bytes, bytes]) -> None:
    old, _new, patch = small
    other = bytearray(old)
    other[1500] ^= 0xFF
    with pytest.raises(PatchError, match="source"):
        fotadelta.apply(bytes(other), patch)


def test_wrong_source_other_size(small: tuple[bytes, bytes, bytes]) -> None:
    old, _new, patch = small
    for other in (old[:-1], old + b"\x00", b"", old[::-1] + old):
        with pytest.raises(PatchError, match="source"):
            fotadelta.apply(other, patch)


def test_wrong_source_large(large: tuple[bytes, bytes, bytes], tmp_path: Path) -> None:
    old, _new, patch = large
    other = mutate(random.Random(99), old, 3)
    (tmp_path / "other").write_bytes(other)
    (tmp_path / "patch").write_bytes(patch)
    with pytest.raises(PatchError, match="source"):
        fotadelta.apply(other, patch)
    with pytest.raises(PatchError, match="source"):
        fotadelta.apply_file(tmp_path / "other", tmp_path / "patch", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("seed", range(20))
def test_random_garbage(seed: int) -> None:
    r = random.Random(seed)
    garbage = r.randbytes(r.randrange(0, 5000))
    with pytest.raises(PatchError):
        fotadelta.apply(b"old image", garbage)
    with pytest.raises(PatchError):
        fotadelta.info(garbage)


@pytest.mark.parametrize("seed", range(20))
def test_garbage_after_valid_header(seed: int, small: tuple[bytes, bytes, bytes]) -> None:
    """A valid magic, version and kind followed by random bytes."""
    old, _new, patch = small
    r = random.Random(seed)
    garbage = patch[:6] + r.randbytes(r.randrange(0, 400))
    with pytest.raises(PatchError):
        fotadelta.apply(old, garbage)


def test_patch_of_wrong_type() -> None:
    with pytest.raises(PatchError):
        fotadelta.apply(b"", b"")
    with pytest.raises(PatchError):
        fotadelta.info(b"FDLT")


def _with_new_size(patch: bytes, new_size: int) -> bytes:
    """The patch with its header claiming another new-image size."""
    from fotadelta.delta.format import Patch
    return dataclasses.replace(Patch.parse(patch), new_size=new_size).encode()


def test_implausible_new_size(small: tuple[bytes, bytes, bytes]) -> None:
    """A patch whose header claims a new image far larger than its records can make."""
    old, _new, patch = small
    with pytest.raises(PatchError):
        fotadelta.apply(old, _with_new_size(patch, 1 << 62))


@pytest.mark.parametrize("new_size", [0, 1, 2987, 2989, 1 << 20])
def test_wrong_new_size(small: tuple[bytes, bytes, bytes], new_size: int, tmp_path: Path) -> None:
    old, new, patch = small
    assert new_size != len(new)
    mutant = _with_new_size(patch, new_size)
    with pytest.raises(PatchError):
        fotadelta.apply(old, mutant)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "patch").write_bytes(mutant)
    with pytest.raises(PatchError):
        fotadelta.apply_file(tmp_path / "old", tmp_path / "patch", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _zstd_frame(content_size: int | None) -> bytes:
    """A magicless zstd frame of one empty raw block whose header claims content_size bytes,
    or has no content size (and a 1 KiB window) when None."""
    if content_size is None:
        return b"\x00\x00" + b"\x01\x00\x00"
    return b"\xe0" + content_size.to_bytes(8, "little") + b"\x01\x00\x00"


@pytest.mark.parametrize("kind, raw_len, claimed", [
    (Kind.FULL, 100, 1 << 40), (Kind.FULL, 100, (1 << 63) + 5), (Kind.DELTA, 3, 1 << 40),
    (Kind.FULL, (1 << 31) - 1, None)])
def test_a_zstd_frame_cannot_make_apply_allocate_what_it_cannot_decode(
        kind: Kind, raw_len: int, claimed: int | None, tmp_path: Path) -> None:
    """zstandard sizes its output by the frame's own content size, else by the length asked for:
    a 5-byte frame claiming a terabyte, or 2 GiB from the header, is refused before allocating
    (it raised MemoryError, found by the Atheris target)."""
    frame = Stream(Codec.ZSTD, raw_len, _zstd_frame(claimed))
    streams = (frame,) if kind == Kind.FULL else (frame,) + (_stored(b""),) * 3
    patch = Patch(kind, 100, raw_len if kind == Kind.FULL else 100, source_fingerprint(bytes(100)),
                  bytes(8), streams).encode()
    (tmp_path / "old").write_bytes(bytes(100))
    (tmp_path / "patch").write_bytes(patch)
    with pytest.raises(PatchError, match="compressed stream does not match its header"):
        fotadelta.apply(bytes(100), patch)
    with pytest.raises(PatchError):
        fotadelta.apply_file(tmp_path / "old", tmp_path / "patch", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _container(kind: Kind = Kind.DELTA, old_size: int = 100, new_size: int = 100,
               streams: tuple[Stream, ...] | None = None, parts: tuple[int, ...] = (),
               code: Stream | None = None, layer: Layer | None = None, digest_len: int = 16) -> bytes:
    """A container with the given fields (encode() writes them as they are, sound or not):
    version 3, or 4 with a digest_len of 8."""
    if streams is None:
        streams = (_stored(b"\x00\x64\x00"), _stored(b""), _stored(b""), _stored(b""))
    return Patch(kind, old_size, new_size, bytes(8), bytes(digest_len), streams, parts, code, layer).encode()


def _stored(data: bytes, raw_len: int | None = None) -> Stream:
    return Stream(Codec.STORED, len(data) if raw_len is None else raw_len, data)


def _header(version: int, kind: int, flags: bytes = b"") -> bytes:
    return b"FDLT" + bytes((version, kind)) + flags + b"\x64\x64" + bytes(24)


@pytest.mark.parametrize("patch, message", [
    (b"FDLX" + bytes(40), "bad magic"),
    (b"FD", "bad magic"),
    (_header(9, 0), "unsupported patch format version 9"),
    (_header(6, 0, b"\x00"), "unsupported patch format version 6"),
    (_header(1, 7), "unknown patch kind 7"),
    (_header(3, 0, b"\x01"), "unknown patch flags 0x1"),
    (_header(3, 0, b"\x10"), "unknown patch flags 0x10"),
    (_header(3, 0, b"\x0c"), "unknown patch flags 0xc"),  # by byte and as sums at once
    (_header(4, 0, b"\x10"), "unknown patch flags 0x10"),
    (_header(4, 0, b"\x0c"), "unknown patch flags 0xc"),
    (_header(3, 0, b"\x40"), "unknown patch flags 0x40"),  # a UF2 layer needs version 4
    (_header(4, 0, b"\x42"), "unknown patch flags 0x42"),  # HEX and UF2 layers at once
    (_header(4, 0, b"\x80"), "unknown patch flags 0x80"),  # relocated copies need version 5
    (_header(5, 0, b"\x81"), "unknown patch flags 0x81"),  # relocated copies and a code transform
    (_header(5, 1, b"\x80"), "a full or referenced image carries no code transform, relocated copies or layer"),
    (_header(4, 1, b"\x01"), "a full or referenced image carries no code transform, relocated copies or layer"),
    (_header(4, 0, b"\x00")[:-9], "truncated"),  # one byte short of the 8-byte digest
    (_header(2, 1), "a full or referenced image carries no code transform, relocated copies or layer"),
    (_header(2, 3), "a full or referenced image carries no code transform, relocated copies or layer"),
    (_header(1, 0)[:-3], "truncated"),
    (b"FDLT\x01\x00" + b"\xff" * 10 + b"\x00", "malformed length field"),
    (b"FDLT\x01\x00" + b"\xff" * 9 + b"\x01", "malformed length field"),
    (_header(1, 0) + b"\x09\x00\x00", "unknown codec 9 for stream ctrl"),
    (_container() + b"abc", "3 unexpected bytes after the last stream"),
    (_container(old_size=100, new_size=100, layer=Layer(51, 10, _stored(b""))), "HEX layer sizes"),
    (_container(old_size=1024, new_size=1024, layer=Layer(953, 10, _stored(b""), Container.UF2), digest_len=8),
     "UF2 layer sizes"),
    (_container(old_size=1024, new_size=1024, layer=Layer(10, 10, _stored(b"", 1041), Container.UF2), digest_len=8),
     "UF2 layer sizes"),
    (_container(code=_stored(b"", 1 << 40)), "code transform stream is implausibly long"),
    (_container(old_size=1 << 31), "2 GiB or more"),
    (_container(Kind.FULL, streams=(_stored(b"x" * 99),)), "image stream length differs"),
    (_container(Kind.REFERENCED, streams=(Stream(Codec.ZSTD, 99, b"x"),)), "image stream length differs"),
    (_container(Kind.REFERENCED, streams=(_stored(b"x" * 100),)), "must be zstd- or LZMA-coded, not codec 0"),
    (_container(Kind.SOLID, streams=(_stored(b"\x00\x64\x00"),), parts=(3, 0, 0, 1)), "sum of its parts"),
    (_container(streams=(_stored(b""), _stored(b""), _stored(b"", 60), _stored(b"", 41))), "longer than the new"),
    (_container(streams=(_stored(b""), _stored(b"", 300), _stored(b""), _stored(b""))), "word map stream"),
    (_container(streams=(_stored(b"", 3001), _stored(b""), _stored(b""), _stored(b""))), "control stream is"),
    (_container(old_size=10, streams=(_stored(b"\x00\x0a\x00"),) + (_stored(b""),) * 3), "records can produce"),
])
def test_container_refusals(patch: bytes, message: str) -> None:
    """Each check of the container reader (csrc/fd_patch.c), with its message, before anything
    is decoded; info() and apply() alike."""
    with pytest.raises(PatchError, match=message):
        fotadelta.info(patch)
    with pytest.raises(PatchError, match=message):
        fotadelta.apply(bytes(100), patch)


def test_container_bounds_accept_the_limits() -> None:
    """The bounds are not off by one: a patch at each of them is read."""
    ctrl = b"\x00\x64\x00"
    assert Patch.parse(_container(streams=(_stored(ctrl, 3000), _stored(b"", 260), _stored(b"", 60),
                                           _stored(b"", 40))))
    assert Patch.parse(_container(old_size=50, new_size=100, streams=(_stored(ctrl, 6),) + (_stored(b""),) * 3))
    assert Patch.parse(_container(old_size=100, new_size=100, layer=Layer(50, 50, _stored(b"", 216))))
    compact = Patch(Kind.DELTA, 100, 100, bytes(8), bytes(8), (_stored(ctrl),) + (_stored(b""),) * 3).encode()
    assert compact[4:7] == b"\x04\x00\x00" and Patch.parse(compact).version == 4


def test_version_5_leaves_out_the_lengths_the_patch_implies() -> None:
    """Version 5 (a 32-bit fingerprint) writes no raw length for the one stream of a full,
    referenced or solid patch, and no stored length for a stored stream: each kind reads back
    as written, 4 bytes of fingerprint and every implied varint shorter than version 4. Lengths
    that no longer agree with the bytes there are refused."""
    ctrl, zstd_extra = b"\x00\x0a\x5a", Stream(Codec.ZSTD, 90, _zstd(b"x" * 90, content_size=False))
    cases = [
        (Kind.DELTA, (_stored(ctrl), _stored(b""), _stored(b""), zstd_extra), (), 4 + 3),  # 3 stored
        (Kind.SOLID, (_stored(ctrl + b"x" * 90),), (3, 0, 0, 90), 4 + 2),  # raw implied, stored
        (Kind.FULL, (Stream(Codec.ZSTD, 100, _zstd(b"y" * 100, content_size=False)),), (), 4 + 1),  # raw
        (Kind.REFERENCED, (Stream(Codec.ZSTD, 100, _zstd(b"y" * 100, content_size=False)),), (), 4 + 1),
    ]
    for kind, streams, parts, saved in cases:
        implied = Patch(kind, 10, 100, bytes(4), bytes(8), streams, parts)
        written = implied.encode()
        assert written[4] == 5 and Patch.parse(written) == implied, kind
        compact = dataclasses.replace(implied, old_fingerprint=bytes(8)).encode()
        assert compact[4] == 4 and len(compact) - len(written) == saved, kind
    solid = Patch(Kind.SOLID, 10, 100, bytes(4), bytes(8), (_stored(ctrl + b"x" * 90),), (3, 0, 0, 90)).encode()
    with pytest.raises(PatchError, match="truncated"):  # a stored stream ends where its raw length says
        Patch.parse(solid[:-1])
    with pytest.raises(PatchError, match="1 unexpected bytes"):
        Patch.parse(solid + b"z")
    huge = Patch(Kind.SOLID, 10, 100, bytes(4), bytes(8), (Stream(Codec.ZSTD, 1 << 63, b""),),
                 (1 << 62, 1 << 62, 0, 0)).encode()
    with pytest.raises(PatchError, match="sum of its parts"):  # 2^63 cannot be a stream's length
        Patch.parse(huge)
    with pytest.raises(ValueError, match="16-byte digest in format version 5"):
        Patch(Kind.DELTA, 10, 100, bytes(4), bytes(16), cases[0][1]).encode()
    # encode() refuses to write a length it leaves out where it is not the implied one.
    for kind, streams, parts in ((Kind.SOLID, (_stored(ctrl + b"x" * 90),), (3, 0, 0, 89)),
                                 (Kind.FULL, (Stream(Codec.ZSTD, 99, b"z"),), ()),
                                 (Kind.DELTA, (_stored(ctrl, 4), _stored(b""), _stored(b""), zstd_extra), ())):
        with pytest.raises(ValueError, match="format version 5"):
            Patch(kind, 10, 100, bytes(4), bytes(8), streams, parts).encode()


def _zstd(data: bytes, *, content_size: bool = True, checksum: bool = False) -> bytes:
    """data as a magicless zstd frame (a patch's streams carry no magic number)."""
    framed = zstandard.ZstdCompressor(write_content_size=content_size, write_checksum=checksum).compress(data)
    return framed[4:]


@pytest.fixture(scope="module")
def zstd_extra() -> tuple[bytes, bytes, bytes]:
    """An old image of 1 MiB (applied a step at a time) and a new one with 45 KB inserted, and
    the inserted bytes: records that copy around them."""
    old = random.Random(17).randbytes(1 << 20)
    inserted = b"fotadelta" * 5000
    return old, old[:500_000] + inserted + old[500_000:], inserted


def _zstd_extra_patch(old: bytes, new: bytes, extra: bytes, raw_len: int) -> bytes:
    ctrl = b"".join(map(encode_varint, (0, 500_000, raw_len, 0, len(old) - 500_000, 0)))
    streams = (_stored(ctrl), _stored(b""), _stored(b""), Stream(Codec.ZSTD, raw_len, extra))
    return Patch(Kind.DELTA, len(old), len(new), source_fingerprint(old), target_digest(new), streams).encode()


@pytest.mark.parametrize("content_size, checksum", [(True, False), (False, True)])
def test_a_zstd_extra_stream_decoded_into_the_image(zstd_extra: tuple[bytes, bytes, bytes], content_size: bool,
                                                     checksum: bool) -> None:
    """A zstd extra stream is decoded into the new image's tail, which fd_apply then reads."""
    old, new, inserted = zstd_extra
    frame = _zstd(inserted, content_size=content_size, checksum=checksum)
    assert fotadelta.apply(old, _zstd_extra_patch(old, new, frame, len(inserted))) == new


@pytest.mark.parametrize("damage", ["trailing byte", "cut short", "a byte longer", "a byte shorter"])
def test_a_zstd_extra_stream_decoded_into_the_image_is_checked(zstd_extra: tuple[bytes, bytes, bytes],
                                                                damage: str) -> None:
    """The checks of a stream decoded on its own hold for one decoded into the image: bytes after
    the frame, a frame cut short, and a frame longer or shorter than its header says fail."""
    old, new, inserted = zstd_extra
    frame, raw_len = _zstd(inserted), len(inserted)
    if damage == "trailing byte":
        frame += b"\x00"
    elif damage == "cut short":
        frame = frame[:-1]
    else:
        # The same records, one more or one fewer inserted byte than the frame holds.
        raw_len += 1 if damage == "a byte longer" else -1
        new = old[:500_000] + bytes(raw_len) + old[500_000:]
    with pytest.raises(PatchError, match="compressed stream"):
        fotadelta.apply(old, _zstd_extra_patch(old, new, frame, raw_len))
