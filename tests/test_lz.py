"""MCU LZ codec (csrc/fd_lz.c device decoder, csrc/fd_lz_enc.c host encoder): round trips,
hostile input, and the ratio on real delta streams next to LZMA."""

from __future__ import annotations

import lzma
import os
import random

import pytest
from hypothesis import given, note
from hypothesis import strategies as st
from support import SHARED_CORPUS, firmware_like, mutate

from fotadelta import PatchError, _core

ALL_WINDOWS = range(_core.LZ_WINDOW_LOG_MIN, _core.LZ_WINDOW_LOG_MAX + 1)
DEVICE_WINDOWS = (10, 11, 12)
LZMA_9E = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]


def incompressible_bound(n: int) -> int:
    """Most a stream of n bytes may grow. The coder adapts fast (docs/mcu-codec.md), which
    suits delta payloads and costs about 2.5% on random bytes."""
    return n + n // 32 + 16


def roundtrip(data: bytes, window_log: int = 12) -> bytes:
    packed = _core.lz_compress(data, window_log)
    assert packed[0] == window_log
    assert _core.lz_decompress(packed, len(data)) == data
    return packed


def decodes_or_refuses(packed: bytes, raw_len: int, step: int = 0) -> bytes | None:
    """Decode hostile input: the only acceptable failure is PatchError; any output has raw_len
    bytes (wrong data is for the caller's digest to catch)."""
    try:
        out = _core.lz_decompress(packed, raw_len, step)
    except PatchError:
        return None
    assert len(out) == raw_len
    return out


def periodic(period: int, size: int, seed: int = 1) -> bytes:
    block = random.Random(seed).randbytes(period)
    return (block * (size // period + 1))[:size]


def sample_inputs() -> dict[str, bytes]:
    rng = random.Random(7)
    image = firmware_like(rng, 60_000)
    return {
        "empty": b"",
        "one byte": b"\x5a",
        "two bytes": b"\x00\xff",
        "random": rng.randbytes(20_000),
        "zeros": bytes(100_000),
        "erased flash": b"\xff" * 70_000 + b"\x01" + b"\xff" * 3000,
        "text": b"the quick brown fox jumps over the lazy dog. " * 400,
        "firmware": image,
        "two versions": image[:30_000] + mutate(rng, image[:30_000], 40),
        "sparse words": b"".join(bytes([rng.choice((0, 0, 0, 4, 8, 0x34))]) + b"\0\0\0" for _ in range(20_000)),
    }


SAMPLES = sample_inputs()


@pytest.mark.parametrize("name", list(SAMPLES))
@pytest.mark.parametrize("window_log", DEVICE_WINDOWS)
def test_roundtrip_samples(name: str, window_log: int) -> None:
    roundtrip(SAMPLES[name], window_log)


@pytest.mark.parametrize("window_log", ALL_WINDOWS)
def test_every_window(window_log: int) -> None:
    rng = random.Random(window_log)
    window = 1 << window_log
    # repeats at the largest distance allowed, one byte beyond it, and one byte short of it
    block = rng.randbytes(window)
    data = block + block + rng.randbytes(1) + block + rng.randbytes(window - 1) + block[:500]
    roundtrip(data, window_log)
    roundtrip(SAMPLES["firmware"][:3 * window], window_log)


@pytest.mark.parametrize("window_log", DEVICE_WINDOWS)
def test_repeats_beyond_the_window_do_not_help(window_log: int) -> None:
    """A block repeated farther back than the window cannot be matched: it costs about as much
    as the first copy."""
    block = random.Random(3).randbytes(1 << window_log)
    once = len(roundtrip(block, window_log))
    far = len(roundtrip(block + bytes(1 << window_log) + block, window_log))
    near = len(roundtrip(block + block, window_log))
    assert near < once + 64
    assert far > 2 * once - 64


def test_empty_stream_is_the_header() -> None:
    assert _core.lz_compress(b"", 11) == bytes([11])
    assert _core.lz_decompress(bytes([11]), 0) == b""


@pytest.mark.parametrize("step", [1, 2, 3, 5, 64, 1000])
def test_pieces_of_any_size(step: int) -> None:
    """Output requested and input delivered a few bytes at a time: matches stop and resume."""
    data = SAMPLES["two versions"] + SAMPLES["erased flash"][:5000]
    packed = roundtrip(data)
    assert _core.lz_decompress(packed, len(data), step) == data


@given(st.binary(max_size=3000), st.sampled_from(DEVICE_WINDOWS))
def test_roundtrip_arbitrary(data: bytes, window_log: int) -> None:
    roundtrip(data, window_log)


@given(st.lists(st.tuples(st.integers(0, 255), st.integers(1, 600)), max_size=30),
       st.binary(min_size=1, max_size=40), st.integers(8, 12))
def test_roundtrip_runs_and_repeats(runs: list[tuple[int, int]], seed_block: bytes, window_log: int) -> None:
    out = bytearray()
    for value, length in runs:
        out += bytes([value]) * length if value & 1 else (seed_block * (length // len(seed_block) + 1))[:length]
    roundtrip(bytes(out), window_log)


def test_repetitive_data_compresses_well() -> None:
    for name in ("zeros", "erased flash", "text"):
        data = SAMPLES[name]
        assert len(roundtrip(data)) < 0.05 * len(data), name
    assert len(roundtrip(periodic(24, 50_000))) < 0.01 * 50_000
    data = SAMPLES["random"]
    assert len(roundtrip(data)) <= incompressible_bound(len(data))


@pytest.mark.parametrize("window_log", DEVICE_WINDOWS)
def test_work_memory_budget(window_log: int) -> None:
    assert _core.lz_work_size(window_log) - (1 << window_log) <= 3 * 1024


def test_bad_parameters() -> None:
    for bad in (_core.LZ_WINDOW_LOG_MIN - 1, _core.LZ_WINDOW_LOG_MAX + 1, -1):
        with pytest.raises(ValueError):
            _core.lz_compress(b"abc", bad)
        with pytest.raises(ValueError):
            _core.lz_work_size(bad)
    with pytest.raises(ValueError):
        _core.lz_decompress(b"\x0c", -1)


# --- lanes ---------------------------------------------------------------------------------

def lane_roundtrip(lanes: list[bytes], windows: list[int], turns: list[int], step: int = 0) -> bytes:
    packed = _core.lz_compress_lanes(lanes, windows, turns)
    assert packed[0] == windows[0] | (len(lanes) - 1) << 5 and list(packed[1:len(lanes)]) == windows[1:]
    assert _core.lz_decompress_lanes(packed, turns, len(lanes), step) == lanes
    return packed


def random_turns(rng: random.Random, lengths: list[int]) -> list[int]:
    """Turns in rotation over the lanes that add up to each lane's length, zero turns included."""
    left, turns = list(lengths), []
    while any(left):
        for lane in range(len(left)):
            n = min(left[lane], rng.choice((0, 1, 3, 64, rng.randrange(1, 5000))))
            turns.append(n)
            left[lane] -= n
    return turns


@pytest.mark.parametrize("seed", range(9))
def test_lanes_roundtrip(seed: int) -> None:
    rng = random.Random(seed)
    names = list(SAMPLES)
    lanes = [SAMPLES[rng.choice(names)] for _ in range(1 + seed % _core.LZ_MAX_LANES)]
    windows = [rng.choice(DEVICE_WINDOWS + (8, 9)) for _ in lanes]
    turns = random_turns(rng, [len(lane) for lane in lanes])
    lane_roundtrip(lanes, windows, turns, step=rng.choice((0, 1, 7, 100)))


@given(st.lists(st.binary(max_size=3000), min_size=1, max_size=3), st.integers(0, 1 << 30),
       st.sampled_from([0, 1, 5]))
def test_lanes_any_order(lanes: list[bytes], seed: int, step: int) -> None:
    rng = random.Random(seed)
    lane_roundtrip(lanes, [8, 10, 9][:len(lanes)], random_turns(rng, [len(lane) for lane in lanes]), step)


def test_lanes_keep_their_own_history() -> None:
    """A lane's matches reach only its own bytes: the same text in both lanes, interleaved in
    small turns, still compresses as two copies of one text rather than as noise."""
    text = SAMPLES["text"][:8000]
    one = len(roundtrip(text, 10))
    two = len(lane_roundtrip([text, text], [10, 10], [100] * 160))
    assert two < 2.2 * one


def test_turns_must_cover_the_lanes() -> None:
    with pytest.raises(ValueError):
        _core.lz_compress_lanes([b"abc", b"de"], [10, 10], [3, 1])
    with pytest.raises(ValueError):
        _core.lz_compress_lanes([b"abc", b"de"], [10, 10], [3, 2, 1])
    with pytest.raises(ValueError):
        _core.lz_compress_lanes([b"abc"], [10, 10], [3])
    with pytest.raises(ValueError):
        _core.lz_compress_lanes([b"a", b"b", b"c", b"d"], [10, 10, 10, 10], [1, 1, 1, 1])


def test_work_memory_per_lane() -> None:
    """Each lane adds its window and its own part of the model (literal tree and flags), the
    same whatever the other lanes."""
    lane_cost = _core.lz_work_size(8, 10) - _core.lz_work_size(10)
    assert lane_cost == _core.lz_work_size(8, 8, 10) - _core.lz_work_size(8, 10)
    assert 256 < lane_cost < 256 + 1024
    with pytest.raises(ValueError):
        _core.lz_work_size(10, 10, 10, 10)


def test_limit_gives_the_stream_or_none() -> None:
    """With a limit, the stream itself when it is that long or shorter, else None."""
    rng = random.Random(7)
    lanes = [rng.randbytes(3000), bytes(2000), rng.randbytes(500) * 8]
    turns = [500, 400, 1000] * 4 + [1000, 400, 0]
    packed = _core.lz_compress_lanes(lanes, [9, 10, 10], turns)
    for limit in (len(packed), len(packed) + 1):
        assert _core.lz_compress_lanes(lanes, [9, 10, 10], turns, limit) == packed
    for limit in (len(packed) - 1, len(packed) // 2, 1):
        assert _core.lz_compress_lanes(lanes, [9, 10, 10], turns, limit) is None
    with pytest.raises(ValueError):
        _core.lz_compress_lanes(lanes, [9, 10, 10], turns, 0)


def test_lane_count_must_match() -> None:
    packed = _core.lz_compress_lanes([b"abc" * 50, b"xyz" * 40], [9, 9], [150, 120])
    with pytest.raises(PatchError):
        _core.lz_decompress(packed, 150)
    with pytest.raises(PatchError):
        _core.lz_decompress_lanes(_core.lz_compress(b"abc" * 50, 9), [150, 0], 2)


def test_two_lane_truncation_and_trailing_data_are_refused() -> None:
    lanes = [CORRUPTION_SOURCE[:5000], CORRUPTION_SOURCE[5000:]]
    turns = random_turns(random.Random(3), [len(lane) for lane in lanes])
    packed = lane_roundtrip(lanes, [8, 10], turns)
    for cut in range(0, len(packed) - 4, 7):
        with pytest.raises(PatchError):
            _core.lz_decompress_lanes(packed[:cut], turns, 2)
    with pytest.raises(PatchError):
        _core.lz_decompress_lanes(packed + b"\xa5" * 8, turns, 2)


# --- hostile input ------------------------------------------------------------------------

CORRUPTION_SOURCE = SAMPLES["two versions"][:6000] + SAMPLES["sparse words"][:4000]
CORRUPTION_PACKED = _core.lz_compress(CORRUPTION_SOURCE, 10)


def test_bad_headers_are_refused() -> None:
    body = CORRUPTION_PACKED[1:]
    for header in (0, 7, 17, 0x2C, 0x8C, 0xFF):
        with pytest.raises(PatchError):
            _core.lz_decompress(bytes([header]) + body, len(CORRUPTION_SOURCE))
    with pytest.raises(PatchError):
        _core.lz_decompress(b"", 10)
    with pytest.raises(PatchError):
        _core.lz_decompress(b"", 0)


def test_truncation_is_refused() -> None:
    n = len(CORRUPTION_PACKED)
    refused = 0
    for cut in range(n):
        out = decodes_or_refuses(CORRUPTION_PACKED[:cut], len(CORRUPTION_SOURCE))
        refused += out is None
        assert out != CORRUPTION_SOURCE or cut >= n - 4  # only the padded tail may go unnoticed
    assert refused >= n - 8


def test_trailing_data_is_refused() -> None:
    # Up to 4 bytes may stand in for the zero bytes the encoder leaves out at the end.
    for extra in (b"\x00" * 5, b"\xa5" * 8, bytes(range(40))):
        with pytest.raises(PatchError):
            _core.lz_decompress(CORRUPTION_PACKED + extra, len(CORRUPTION_SOURCE))


def test_wrong_length_is_refused() -> None:
    n = len(CORRUPTION_SOURCE)
    with pytest.raises(PatchError):
        _core.lz_decompress(CORRUPTION_PACKED, n + 100)
    with pytest.raises(PatchError):
        _core.lz_decompress(CORRUPTION_PACKED, n - 10)


@given(st.integers(1, len(CORRUPTION_PACKED) - 1), st.integers(1, 255), st.sampled_from([0, 1, 7]))
def test_flipped_byte(position: int, xor: int, step: int) -> None:
    mutant = bytearray(CORRUPTION_PACKED)
    mutant[position] ^= xor
    out = decodes_or_refuses(bytes(mutant), len(CORRUPTION_SOURCE), step)
    note(f"refused={out is None}")


@given(st.binary(max_size=2000), st.integers(0, 5000))
def test_garbage(data: bytes, raw_len: int) -> None:
    decodes_or_refuses(data, raw_len)


@given(st.sampled_from(list(ALL_WINDOWS)), st.binary(max_size=400), st.integers(0, 20_000))
def test_garbage_with_valid_header(window_log: int, body: bytes, raw_len: int) -> None:
    decodes_or_refuses(bytes([window_log]) + body, raw_len)


@given(st.binary(min_size=1, max_size=1500), st.data())
def test_appended_garbage_never_passes_as_the_original(data: bytes, draw: st.DataObject) -> None:
    packed = _core.lz_compress(data, 12)
    tail = draw.draw(st.binary(min_size=5, max_size=50))
    out = decodes_or_refuses(packed + tail, len(data))
    assert out != data


# --- ratio on real delta streams ----------------------------------------------------------

def corpus_pairs() -> list:
    if not SHARED_CORPUS.is_dir():
        return []
    return sorted(d for d in SHARED_CORPUS.iterdir() if (d / "old").is_file() and (d / "new").is_file())


@pytest.mark.skipif(not corpus_pairs(), reason="no ../shared/corpus")
def test_ratio_on_corpus_deltas(record_property) -> None:
    """Compress each pair's delta streams and their concatenation; print the sizes next to
    raw LZMA2 preset 9e (no assertion on the comparison)."""
    totals: dict[str, int] = {}
    lines = []
    for pair in corpus_pairs():
        old, new = (pair / "old").read_bytes(), (pair / "new").read_bytes()
        (ctrl, wmap, words, extra), _, _ = _core.OldIndex(old).diff_streams(new)
        streams = {"extra": extra, "words": words, "all": ctrl + wmap + words + extra}
        row = [pair.name[:34].ljust(34)]
        for name, data in streams.items():
            ref = len(lzma.compress(data, format=lzma.FORMAT_RAW, filters=LZMA_9E))
            totals[f"{name} lzma"] = totals.get(f"{name} lzma", 0) + ref
            sizes = []
            for w in DEVICE_WINDOWS if name == "all" else (12,):
                size = len(roundtrip(data, w))
                assert size <= incompressible_bound(len(data))
                totals[f"{name} w{w}"] = totals.get(f"{name} w{w}", 0) + size
                sizes.append(f"w{w} {size}")
            row.append(f"{name} {len(data)}: lzma {ref} / {' '.join(sizes)}")
        lines.append("  ".join(row))
    lines.append("totals: " + ", ".join(f"{k} {v}" for k, v in totals.items()))
    print("\n" + "\n".join(lines))
    for key, value in totals.items():
        record_property(key, value)


def test_speed_is_reported(record_property) -> None:
    """Encoder throughput on 1 MB of firmware-like data, recorded only."""
    import time

    data = firmware_like(random.Random(5), 1 << 20)
    start = time.perf_counter()
    packed = _core.lz_compress(data, 12)
    seconds = time.perf_counter() - start
    assert _core.lz_decompress(packed, len(data)) == data
    record_property("encode_MB_per_s", round(len(data) / seconds / 1e6, 2))
    print(f"\nlz_compress: {len(data)} -> {len(packed)} bytes, {len(data) / seconds / 1e6:.1f} MB/s")


if os.environ.get("FD_LZ_SLOW_TESTS"):
    @given(st.binary(min_size=0, max_size=200_000))
    def test_roundtrip_large(data: bytes) -> None:
        roundtrip(data, 12)
