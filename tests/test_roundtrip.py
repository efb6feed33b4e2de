"""Round trips: real firmware pairs, generated edge cases, and the file (streaming) API."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
from support import Pair, find_pairs, firmware_like, mutate

import fotadelta
from fotadelta import PatchError

PAIRS = find_pairs()
# A patch never needs more than the new image plus its header (the full-image fallback).
HEADER_ALLOWANCE = 128


def roundtrip(old: bytes, new: bytes, *, expect_kind: str | None = None) -> bytes:
    """diff + apply + info, checking everything that must hold; returns the patch."""
    patch = fotadelta.diff(old, new)
    info = fotadelta.info(patch)
    assert (info.old_size, info.new_size, info.patch_bytes) == (len(old), len(new), len(patch))
    assert info.kind in ("delta", "full", "referenced")
    if expect_kind is not None:
        assert info.kind == expect_kind
    if info.kind == "delta":
        assert info.copied_bytes + info.inserted_bytes == len(new)
        names = ["records"] if info.solid else ["ctrl", "wmap", "words", "extra"]
        assert [s.name for s in info.streams] == names
    else:
        assert [s.name for s in info.streams] == ["image"]
    assert sum(s.stored_bytes for s in info.streams) < len(patch)
    assert len(patch) <= len(new) + HEADER_ALLOWANCE
    assert fotadelta.apply(old, patch) == new
    return patch


def file_roundtrip(tmp_path: Path, old: bytes, new: bytes) -> fotadelta.PatchInfo:
    """diff_file + apply_file through real files; checks the output and that no temporary
    file is left behind."""
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    info = fotadelta.diff_file(tmp_path / "old", tmp_path / "new", tmp_path / "patch")
    patch = (tmp_path / "patch").read_bytes()
    assert info == fotadelta.info(patch)
    fotadelta.apply_file(tmp_path / "old", tmp_path / "patch", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "old", "out", "patch"]
    return info


# --- real firmware ---------------------------------------------------------------------------

@pytest.mark.parametrize("pair", PAIRS, ids=[p.name for p in PAIRS])
def test_corpus_pair(pair: Pair, tmp_path: Path) -> None:
    old, new = pair.old.read_bytes(), pair.new.read_bytes()
    patch = roundtrip(old, new)
    # Two versions of one firmware share most of their bytes: the patch is far smaller.
    assert len(patch) < len(new) // 2
    (tmp_path / "patch").write_bytes(patch)
    fotadelta.apply_file(pair.old, tmp_path / "patch", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == new


# --- generated edge cases --------------------------------------------------------------------

RNG_SEED = 20240611


def rng() -> random.Random:
    return random.Random(RNG_SEED)


def test_both_empty() -> None:
    roundtrip(b"", b"")


def test_empty_old() -> None:
    roundtrip(b"", firmware_like(rng(), 5000))


def test_empty_new() -> None:
    roundtrip(firmware_like(rng(), 5000), b"")


def test_identical() -> None:
    image = firmware_like(rng(), 64 * 1024)
    patch = roundtrip(image, image, expect_kind="delta")
    info = fotadelta.info(patch)
    assert (info.copied_bytes, info.changed_words, info.inserted_bytes) == (len(image), 0, 0)
    assert len(patch) < 200


@pytest.mark.parametrize("old,new", [(b"", b"\x00"), (b"\x00", b""), (b"\x00", b"\x00"), (b"\x00", b"\x01"),
                                     (b"\xff", b"\xff\xff"), (b"ab", b"ba")])
def test_one_byte(old: bytes, new: bytes) -> None:
    roundtrip(old, new)


def test_nothing_in_common() -> None:
    r = rng()
    old, new = r.randbytes(50_000), r.randbytes(50_000)
    patch = roundtrip(old, new, expect_kind="full")
    assert len(patch) <= len(new) + HEADER_ALLOWANCE


def test_moved_blocks() -> None:
    r = rng()
    old = firmware_like(r, 256 * 1024)
    chunks = [old[i:i + 4096] for i in range(0, len(old), 4096)]
    r.shuffle(chunks)
    new = b"".join(chunks)
    patch = roundtrip(old, new, expect_kind="delta")
    assert len(patch) < len(new) // 20


def test_ff_fill() -> None:
    old = b"\xff" * 100_000
    new = bytearray(old)
    new[50_000:50_010] = bytes(range(10))
    roundtrip(old, bytes(new))
    roundtrip(old, b"\xff" * 150_000)
    roundtrip(b"\xff" * 150_000, old)


def test_repeating_words() -> None:
    word = struct.pack("<I", 0xE7FEE7FE)
    old = word * 30_000
    new = bytearray(old)
    for pos in range(1000, len(new), 10_000):
        struct.pack_into("<I", new, pos, 0x46C04770)
    roundtrip(old, bytes(new), expect_kind="delta")
    roundtrip(old, struct.pack("<I", 0xDEADBEEF) * 30_000)


def test_growth_and_shrink() -> None:
    r = rng()
    old = firmware_like(r, 100_000)
    grown = old[:40_000] + firmware_like(r, 60_000) + old[40_000:]
    shrunk = old[:20_000] + old[70_000:]
    roundtrip(old, grown)
    roundtrip(old, shrunk)
    roundtrip(grown, old)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 8, 9, 63, 64, 65, 4095, 4096, 4097])
def test_small_sizes(size: int) -> None:
    r = random.Random(size)
    old = firmware_like(r, size)
    roundtrip(old, old)
    roundtrip(old, mutate(r, old, 2))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_change_in_partial_last_word(seed: int) -> None:
    """A change in the 3-byte last word of an image whose size is not a multiple of 4."""
    old = firmware_like(random.Random(seed), 4003)
    new = bytearray(old)
    new[4000] ^= 0x01
    roundtrip(old, bytes(new), expect_kind="delta")


def test_change_in_word_before_trailing_insert() -> None:
    """A changed word that the copy covers only partly, the rest being inserted at the end."""
    old = firmware_like(random.Random(2), 4000)
    new = bytearray(old[:3999]) + bytes([old[3999] ^ 0xFF])
    new[3996] ^= 0x01
    roundtrip(old, bytes(new), expect_kind="delta")


def test_over_16_mib(tmp_path: Path) -> None:
    """~17 MiB images: offsets and lengths beyond 24 bits, a block moved across 16 MiB."""
    r = rng()
    size = 17 * 1024 * 1024 + 123
    old = bytearray(r.randbytes(size))
    new = bytearray(old)
    for pos in (5, 1 << 20, (1 << 24) - 2, (1 << 24) + 7, size - 9):
        struct.pack_into("<I", new, pos, 0x12345678)
    new[(1 << 24) + 1000:(1 << 24) + 1000] = b"inserted past 16 MiB"
    block = bytes(old[100_000:164_000])
    new[size - 200_000:size - 200_000 + len(block)] = block
    del new[3_000_000:3_000_500]
    old_b, new_b = bytes(old), bytes(new)
    patch = roundtrip(old_b, new_b, expect_kind="delta")
    assert len(patch) < 10_000
    (tmp_path / "old").write_bytes(old_b)
    (tmp_path / "patch").write_bytes(patch)
    fotadelta.apply_file(tmp_path / "old", tmp_path / "patch", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == new_b


# --- file API --------------------------------------------------------------------------------

def test_file_roundtrip_delta(tmp_path: Path) -> None:
    r = rng()
    old = firmware_like(r, 300_000)
    info = file_roundtrip(tmp_path, old, mutate(r, old, 40))
    assert info.kind == "delta"


def test_file_roundtrip_full(tmp_path: Path) -> None:
    r = rng()
    info = file_roundtrip(tmp_path, r.randbytes(200_000), firmware_like(r, 300_000))
    assert info.kind == "full"


@pytest.mark.parametrize("share,related,coded", [(0.95, True, True), (0.985, True, False), (0.985, False, True),
                                                 (1.02, False, False)])
def test_the_full_image_is_coded_only_where_its_estimate_may_win(share: float, related: bool, coded: bool) -> None:
    """The full image is coded where its estimate is below _FULL_CODE_SHARE of the delta's; between
    that and the delta's estimate only where the delta copies under _FULL_COPIED_SHARE of the image
    (it is then the image and its records); never above the delta's estimate. The delta is a real
    one, with its estimated size set to put the image's estimate at share of it."""
    from fotadelta import _core
    from fotadelta import delta as D

    r = rng()
    image = firmware_like(r, 60_000)
    old = mutate(r, image, 30) if related else r.randbytes(60_000)
    found = D._Delta(*_core.OldIndex(old, 1).diff_streams(image, min_gain=D.SMALL_GAIN), D.SMALL_GAIN, None, None)
    assert (found.stats["copied"] >= D._FULL_COPIED_SHARE * len(image)) == related
    found.size = int(D.estimate(image).size / share)
    header = (len(old), len(image), D.source_fingerprint(old), D.target_digest(image))
    patch = D._full(header, image, found, D.encoder_window(len(old)))
    assert (patch is not None) == coded
    if patch is not None:
        assert fotadelta.info(patch).kind == "full" and fotadelta.apply(old, patch) == image


@pytest.mark.parametrize("old_size,new_size", [(0, 0), (0, 1000), (1000, 0)])
def test_file_roundtrip_empty(tmp_path: Path, old_size: int, new_size: int) -> None:
    r = rng()
    info = file_roundtrip(tmp_path, firmware_like(r, old_size), firmware_like(r, new_size))
    assert (info.old_size, info.new_size) == (old_size, new_size)


def test_diff_progress_reports() -> None:
    r = rng()
    old = firmware_like(r, 200_000)
    new = mutate(r, old, 20)
    seen: list[tuple[int, int]] = []
    patch = fotadelta.diff(old, new, progress=lambda done, total: seen.append((done, total)))
    assert seen, "progress was never called"
    assert all(0 <= done <= total for done, total in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert seen[-1][0] == seen[-1][1]
    assert fotadelta.apply(old, patch) == new


def test_diff_progress_exception_propagates() -> None:
    class Stop(Exception):
        pass

    def stop(done: int, total: int) -> None:
        raise Stop

    with pytest.raises(Stop):
        fotadelta.diff(b"a" * 10_000, b"b" * 10_000, progress=stop)


def test_apply_file_failure_leaves_nothing(tmp_path: Path) -> None:
    r = rng()
    old = firmware_like(r, 50_000)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "patch").write_bytes(fotadelta.diff(old, mutate(r, old, 5)))
    (tmp_path / "other").write_bytes(mutate(r, old, 5))
    with pytest.raises(PatchError, match="source"):
        fotadelta.apply_file(tmp_path / "other", tmp_path / "patch", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old", "other", "patch"]


def test_new_data_longer_than_the_encoder_window() -> None:
    """A delta that is mostly new data is coded with a dictionary of a quarter of the old image
    (encoder memory), shorter than its stream: the reader's larger dictionary still decodes it,
    and the new data still compresses."""
    from fotadelta.delta import encoder_window
    from fotadelta.delta.format import Patch

    rng = random.Random(10)
    old = rng.randbytes(512 << 10)
    new = old[:64 << 10] + firmware_like(rng, 3 << 20)
    patch = fotadelta.diff(old, new)
    extra = Patch.parse(patch).streams[-1]
    assert extra.raw_len > 4 * encoder_window(len(old))
    assert len(extra.data) < extra.raw_len // 2
    assert fotadelta.apply(old, patch) == new


def test_apply_file_reads_long_zstd_streams_in_turn(tmp_path: Path) -> None:
    """apply_file reads each stream a piece at a time, the streams in turn: two long zstd
    streams must not share a decoding context (they once did, and corrupted each other)."""
    from dataclasses import replace

    from fotadelta.delta.codec import Codec, _zstd, decompress
    from fotadelta.delta.format import Kind, Patch, Stream

    r = random.Random(11)
    old = firmware_like(r, 1 << 19)
    new = bytearray(old)
    for at in range(0, len(new) - 2, 11):  # changed words all along (3 bytes each: not grouped by byte)
        new[at:at + 3] = bytes(v ^ r.randrange(1, 256) for v in new[at:at + 3])
    for at in range(len(new) - (1 << 16), 0, -(1 << 16)):  # inserted data all along: a long extra stream
        new[at:at] = firmware_like(r, 40_000)
    p = Patch.parse(fotadelta.diff(old, bytes(new)))
    assert p.kind == Kind.DELTA
    streams = tuple(Stream(Codec.ZSTD, s.raw_len, _zstd(bytes(decompress(s.codec, s.data, s.raw_len)), 3))
                    for s in p.streams)
    assert sum(s.raw_len > 1 << 17 for s in streams) >= 2  # several zstd blocks each
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "patch").write_bytes(replace(p, streams=streams).encode())
    fotadelta.apply_file(tmp_path / "old", tmp_path / "patch", tmp_path / "new")
    assert (tmp_path / "new").read_bytes() == new


def test_apply_file_refuses_a_zstd_frame_whose_window_exceeds_its_stream(tmp_path: Path) -> None:
    """A streamed zstd frame may declare a window of up to 128 MiB (zstd's default limit): apply_file
    bounds it by the stream's declared length, so a small hostile patch cannot make it allocate one."""
    from dataclasses import replace

    import zstandard

    from fotadelta.delta.codec import Codec, decompress
    from fotadelta.delta.format import Kind, Patch, Stream

    r = random.Random(12)
    old = firmware_like(r, 1 << 19)
    new = bytes(mutate(r, old, 400))
    p = Patch.parse(fotadelta.diff(old, new))
    assert p.kind == Kind.DELTA  # (a solid patch's records are decoded whole, with no window)
    wide = zstandard.ZstdCompressionParameters(window_log=26, format=zstandard.FORMAT_ZSTD1_MAGICLESS)

    def coded(raw: bytes) -> bytes:
        writer = zstandard.ZstdCompressor(compression_params=wide).compressobj()
        return writer.compress(raw) + writer.flush()

    streams = tuple(Stream(Codec.ZSTD, s.raw_len, coded(bytes(decompress(s.codec, s.data, s.raw_len))))
                    for s in p.streams)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "patch").write_bytes(replace(p, streams=streams).encode())
    with pytest.raises(PatchError, match="too much memory"):
        fotadelta.apply_file(tmp_path / "old", tmp_path / "patch", tmp_path / "new")
    assert not (tmp_path / "new").exists()


def _table(rng: random.Random, n: int) -> bytes:
    """n bytes of 8-byte records (a 32-bit pointer, an index, a small tag): LZMA's aligned
    contexts code them far smaller than zstd."""
    return b"".join(struct.pack("<IHH", 0x08000000 + 4 * rng.randrange(4096), i, rng.randrange(3))
                    for i in range(n // 8))


@pytest.mark.parametrize("kind", ["firmware", "table"])
@pytest.mark.parametrize("size", [1000, 3000])
def test_a_stream_takes_the_codec_of_lowest_price(kind: str, size: int) -> None:
    """A stream is coded with whichever of LZMA, zstd and storing has the lowest price: its
    bytes plus its expected decode time at codec.APPLY_NS_PER_BYTE. LZMA decodes an order of
    magnitude slower, so a few KB of firmware that it codes a few percent smaller stay zstd,
    and a table it codes a fifth smaller goes LZMA."""
    from fotadelta.delta.codec import Codec, _lzma, _zstd, compress, decode_ns, estimate, price

    rng = random.Random(size)
    data = firmware_like(rng, size) if kind == "firmware" else _table(rng, size)
    guess = estimate(data)
    codec, coded = compress(data, guess)
    by_lzma, by_zstd = _lzma(data, guess.shape), _zstd(data)  # zstd's level below 4 KB
    prices = {Codec.LZMA: price(len(by_lzma), decode_ns(Codec.LZMA, len(by_lzma), size)),
              Codec.ZSTD: price(len(by_zstd), decode_ns(Codec.ZSTD, len(by_zstd), size)),
              Codec.STORED: float(size)}
    assert prices[codec] == min(prices.values())
    assert codec == (Codec.ZSTD if kind == "firmware" else Codec.LZMA)
    if kind == "firmware":
        assert len(by_lzma) < len(coded)  # smaller, but not by enough to pay for its decoding


@pytest.mark.parametrize("kind", ["firmware", "table", "counts"])
@pytest.mark.parametrize("size", [5000, 20000, 90000])
def test_the_zstd_screens_drop_no_coding_that_wins(kind: str, size: int) -> None:
    """From 4 KB on, the strong zstd level is skipped when a fast one rules it out (1.3x LZMA,
    or a price above LZMA's even 1.43x smaller): a stream whose strong zstd prices below LZMA
    and whose fast zstd passes the first screen is still coded with zstd, as is one whose fast
    zstd is below _ZSTD_FIRST_RATIO times its LZMA estimate (_ZSTD_FIRST_DENSE on a stream
    estimated at _DENSE of its length or more; LZMA is then not tried). From _ZSTD_PICK_MIN bytes
    on, a mid zstd level within _ZSTD_PICK_ZSTD of the fast one keeps zstd, one below
    _ZSTD_PICK_LZMA of it rules zstd out."""
    from fotadelta.delta.codec import (_DENSE, _ZSTD_FIRST_DENSE, _ZSTD_FIRST_RATIO, _ZSTD_MID_LEVEL,
                                       _ZSTD_PICK_DENSE, _ZSTD_PICK_EST, _ZSTD_PICK_LZMA, _ZSTD_PICK_MIN,
                                       _ZSTD_PICK_ZSTD, _ZSTD_SCREEN_LEVEL, _ZSTD_SCREEN_RATIO, Codec, _lzma,
                                       _zstd, compress, decode_ns, estimate, price, zstd_level)

    rng = random.Random(size)
    if kind == "firmware":
        data = firmware_like(rng, size)
    elif kind == "table":
        data = _table(rng, size)
    else:  # small varints, as the record streams of a small image are
        data = bytes(rng.choice((0, 0, 1, 2, 4, 8, 0x81)) for _ in range(size))
    guess = estimate(data)
    codec, _ = compress(data, guess)
    by_lzma, strong = _lzma(data, guess.shape), _zstd(data, zstd_level(size))
    wins = (price(len(strong), decode_ns(Codec.ZSTD, len(strong), size))
            <= price(len(by_lzma), decode_ns(Codec.LZMA, len(by_lzma), size)))
    fast = len(_zstd(data, _ZSTD_SCREEN_LEVEL))
    first = _ZSTD_FIRST_DENSE if guess.size >= _DENSE * size else _ZSTD_FIRST_RATIO
    gain = len(_zstd(data, _ZSTD_MID_LEVEL)) / fast if size >= _ZSTD_PICK_MIN else 1.0
    alone = gain >= _ZSTD_PICK_ZSTD and fast < _ZSTD_PICK_EST * guess.size and guess.size >= _ZSTD_PICK_DENSE * size
    if fast < first * guess.size or alone:
        assert codec == Codec.ZSTD
    elif wins and fast <= _ZSTD_SCREEN_RATIO * len(by_lzma) and gain >= _ZSTD_PICK_LZMA:
        assert codec == Codec.ZSTD
    else:
        assert codec != Codec.ZSTD


def _unmatched_words(rng: random.Random, n: int) -> bytes:
    """n bytes of 32-bit words with little to match but a distribution of its own at each byte
    of the word (a random low half, a top byte of three values): zstd's deeper search finds
    nothing more in them, while LZMA's position contexts code them a fifth smaller."""
    tops = [rng.randrange(256) for _ in range(3)]
    seconds = [rng.randrange(256) for _ in range(24)]
    return b"".join(bytes((rng.randrange(256), rng.randrange(256), rng.choice(seconds), rng.choice(tops)))
                    for _ in range(n // 4))


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("long", [False, True])
def test_a_long_stream_the_mid_zstd_level_cannot_shrink_still_goes_lzma_where_cheaper(seed: int, long: bool) -> None:
    """The mid zstd level within _ZSTD_PICK_ZSTD of the fast one keeps a stream zstd alone only
    when LZMA, estimated on the whole of a long stream, does not price below it (from _ZSTD_LONG
    bytes on, at _LZMA_LEAST of that estimate): a quarter of a megabyte, or a megabyte, of words
    zstd finds no matches in is coded with LZMA, the codec of lower price."""
    from fotadelta.delta.codec import (_ESTIMATE_SAMPLE, _RECHECK_SHARE, _ZSTD_LONG, _ZSTD_MID_LEVEL,
                                       _ZSTD_PICK_ZSTD, _ZSTD_SCREEN_LEVEL, Codec, _lzma, _zstd, compress,
                                       decode_ns, estimate, price, zstd_level)

    size = (_ZSTD_LONG if long else _RECHECK_SHARE * _ESTIMATE_SAMPLE) + 4096
    assert (size >= _ZSTD_LONG) == long
    data = _unmatched_words(random.Random(seed), size)
    assert len(_zstd(data, _ZSTD_MID_LEVEL)) >= _ZSTD_PICK_ZSTD * len(_zstd(data, _ZSTD_SCREEN_LEVEL))
    guess = estimate(data)
    codec, coded = compress(data, guess)
    by_zstd = _zstd(data, zstd_level(size))
    assert codec == Codec.LZMA and coded == _lzma(data, guess.shape)
    assert (price(len(coded), decode_ns(Codec.LZMA, len(coded), size))
            < price(len(by_zstd), decode_ns(Codec.ZSTD, len(by_zstd), size)))


def _lzma_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The lengths of the streams codec._lzma is called on from now on, as they come."""
    from fotadelta.delta import codec

    calls: list[int] = []
    lzma = codec._lzma

    def counted(data: bytes, shape: codec.Shape, lean: bool = False, window: int | None = None) -> bytes:
        calls.append(len(data))
        return lzma(data, shape, lean, window)

    monkeypatch.setattr(codec, "_lzma", counted)
    return calls


@pytest.mark.parametrize("kind", ["table", "counts"])
@pytest.mark.parametrize("size", [3000, 50_000])
def test_lzma_is_coded_only_where_the_fast_zstd_leaves_it_a_chance(kind: str, size: int,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """LZMA, the slowest coder, is not run on a stream whose fast zstd (the strong one below
    _ZSTD_MAX bytes) comes out below _ZSTD_FIRST_RATIO times its LZMA estimate (small varints,
    as record streams often are); a table that LZMA codes far smaller is still coded with it,
    and kept."""
    from fotadelta.delta import codec

    rng = random.Random(7)
    if kind == "table":
        data = _table(rng, size)
    else:
        data = bytes(rng.choice((0, 0, 1, 2, 4, 8, 0x81)) for _ in range(size))
    guess = codec.estimate(data)
    calls = _lzma_calls(monkeypatch)
    kept, coded = codec.compress(data, guess)
    assert codec.decompress(kept, coded, size) == data
    if kind == "counts":
        level = codec._ZSTD_SCREEN_LEVEL if size >= codec._ZSTD_MAX else codec.zstd_level(size)
        assert len(codec._zstd(data, level)) < codec._ZSTD_FIRST_RATIO * guess.size
        assert (kept, calls) == (codec.Codec.ZSTD, [])
    else:
        assert (kept, calls) == (codec.Codec.LZMA, [size])


@pytest.mark.parametrize("kind", ["firmware", "words"])
def test_a_mid_zstd_level_leaves_one_coder_to_run(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream of _ZSTD_PICK_MIN bytes or more that the fast zstd leaves to both coders is coded
    with one of them: zstd where its mid level gains little over the fast one (firmware-like
    bytes and a table), LZMA where it gains much (4-byte words drawn from a few thousand), and
    decodes back."""
    from fotadelta.delta import codec

    rng = random.Random(11)
    size = 200_000
    if kind == "firmware":
        data = firmware_like(rng, size)[:size * 2 // 3] + _table(rng, size)[:size // 3]
    else:
        words = [rng.randbytes(4) for _ in range(5000)]
        data = b"".join(rng.choice(words) for _ in range(size // 4))
    guess = codec.estimate(data)
    fast = len(codec._zstd(data, codec._ZSTD_SCREEN_LEVEL))
    gain = len(codec._zstd(data, codec._ZSTD_MID_LEVEL)) / fast
    assert fast >= codec._ZSTD_FIRST_RATIO * guess.size  # not settled by the fast zstd alone
    coded: list[str] = []
    lzma, zstd = codec._lzma, codec._zstd

    def counted_lzma(data: bytes, shape: codec.Shape, lean: bool = False, window: int | None = None) -> bytes:
        coded.append("lzma")
        return lzma(data, shape, lean, window)

    def counted_zstd(data: bytes, level: int = 22) -> bytes:
        if level == codec.zstd_level(len(data)):
            coded.append("zstd")
        return zstd(data, level)

    monkeypatch.setattr(codec, "_lzma", counted_lzma)
    monkeypatch.setattr(codec, "_zstd", counted_zstd)
    kept, out = codec.compress(data, guess)
    assert codec.decompress(kept, out, len(data)) == data
    if kind == "firmware":
        assert gain >= codec._ZSTD_PICK_ZSTD and fast < codec._ZSTD_PICK_EST * guess.size
        assert guess.size >= codec._ZSTD_PICK_DENSE * len(data)
        assert (kept, coded) == (codec.Codec.ZSTD, ["zstd"])
    else:
        assert gain < codec._ZSTD_PICK_LZMA
        assert (kept, coded) == (codec.Codec.LZMA, ["lzma"])


def _phrases(rng: random.Random, n: int) -> bytes:
    """n bytes of short phrases (2-7 bytes) drawn from 500, common ones more often, with a fifth
    of random bytes between: zstd's mid level gains a few percent over its fast one, and LZMA's
    optimal parse not enough to pay for its decoding."""
    words = [rng.randbytes(rng.randrange(2, 8)) for _ in range(500)]
    out = bytearray()
    while len(out) < n:
        if rng.random() < 0.2:
            out += rng.randbytes(rng.randrange(1, 6))
        elif rng.random() < 0.5:
            out += words[min(int(rng.paretovariate(1.0)) - 1, len(words) - 1)]
        else:
            out += rng.choice(words)
    return bytes(out[:n])


@pytest.mark.parametrize("size", [60_000, 120_000])
def test_between_the_mid_levels_bounds_lzma_is_coded_only_where_it_may_win(size: int,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream whose mid zstd level lies between _ZSTD_PICK_LZMA and _ZSTD_PICK_ZSTD times its
    fast one is coded with zstd's own level first, and not with LZMA where LZMA at _LZMA_LEAST
    of its estimate would still price above it; coded here, LZMA does price above zstd."""
    from fotadelta.delta import codec

    data = _phrases(random.Random(size + 508), size)
    guess = codec.estimate(data)
    fast = len(codec._zstd(data, codec._ZSTD_SCREEN_LEVEL))
    mid = len(codec._zstd(data, codec._ZSTD_MID_LEVEL))
    assert codec._ZSTD_PICK_LZMA * fast <= mid < codec._ZSTD_PICK_ZSTD * fast
    assert fast >= codec._ZSTD_FIRST_RATIO * guess.size and fast < codec._ZSTD_PICK_EST * guess.size
    assert guess.size >= codec._ZSTD_PICK_DENSE * size and size < codec._RECHECK_SHARE * codec._ESTIMATE_SAMPLE
    by_lzma = codec._lzma(data, guess.shape)
    calls = _lzma_calls(monkeypatch)
    kept, coded = codec.compress(data, guess)
    assert (kept, calls) == (codec.Codec.ZSTD, [])
    assert codec.decompress(kept, coded, size) == data
    assert codec._zstd_price(len(coded), size) < codec._lzma_price(len(by_lzma), size)


@pytest.mark.parametrize("size", [200_000, 1_300_000])
def test_a_stream_whose_sample_does_not_shrink_keeps_its_far_repeats(size: int) -> None:
    """Random blocks, each twice, far apart (encrypted microcode holds its blobs so): no sample
    of the stream shrinks, the whole stream does. It is coded with zstd, not stored; random
    bytes alone still are."""
    from fotadelta.delta import codec

    rng = random.Random(size)
    data = bytearray(rng.randbytes(size))
    piece = codec._ESTIMATE_SAMPLE // codec._ESTIMATE_PIECES
    stride = (size - piece) // (codec._ESTIMATE_PIECES - 1)
    blob = min(size // 10, stride - piece - 16)  # between the sample's pieces 1 and 2, and 5 and 6
    data[stride + piece:stride + piece + blob] = data[5 * stride + piece:5 * stride + piece + blob]
    data = bytes(data)
    guess = codec.estimate(data)
    assert guess.size == len(data) > codec._ESTIMATE_SAMPLE
    kept, coded = codec.compress(data, guess)
    assert kept == codec.Codec.ZSTD and len(coded) < len(data) - blob // 2
    assert codec.decompress(kept, coded, len(data)) == data
    noise = rng.randbytes(size)
    assert codec.compress(noise, codec.estimate(noise)) == (codec.Codec.STORED, noise)


@pytest.mark.parametrize("kind", ["firmware", "table", "counts", "zeros", "random", "repeats"])
@pytest.mark.parametrize("size", [3000, 40000, 300000])
def test_the_size_floor_is_below_any_coding(kind: str, size: int) -> None:
    """codec.size_floor, which rules the full image out of small diffs without an estimate,
    stays below what compress() makes of the data and below LZMA of every shape and the
    strong zstd level, on data that compresses anywhere from nothing to almost all."""
    from fotadelta.delta.codec import (_LZMA_SHAPES, _ZSTD_LEVELS, _ZSTD_SMALL_LEVEL, _lzma, _zstd, compress, estimate,
                                       size_floor)

    rng = random.Random(size)
    if kind == "firmware":
        data = firmware_like(rng, size)
    elif kind == "table":
        data = _table(rng, size)
    elif kind == "counts":
        data = bytes(rng.choice((0, 0, 1, 2, 4, 8, 0x81)) for _ in range(size))
    elif kind == "zeros":
        data = bytes(size)
    elif kind == "random":
        data = rng.randbytes(size)
    else:  # one random block over and over, farther apart than short matches reach
        block = rng.randbytes(5000)
        data = (block * (size // len(block) + 1))[:size]
    floor = size_floor(data)
    _, coded = compress(data, estimate(data), lean=True)
    codings = [len(coded), *(len(_lzma(data, s)) for s in _LZMA_SHAPES), *(len(_zstd(data, lv)) for lv in (*_ZSTD_LEVELS, _ZSTD_SMALL_LEVEL))]
    assert 0 <= floor <= min(codings)
