"""Helpers shared by the benchmarks: loading a sibling script as a module, synthetic firmware.

Plain Python (no pytest): dm_sessions.py imports it when run as a script, conftest.py puts this
directory on sys.path so that the pytest benchmarks can import it too."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
FLASH_BASE = 0x0800_0000


def load_script(filename: str, module_name: str) -> ModuleType:
    """benchmarks/<filename> as a module named module_name, whatever pytest's import mode."""
    spec = importlib.util.spec_from_file_location(module_name, HERE / filename)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _image(code: list[int], strings: bytes, pointers: list[int]) -> bytes:
    return (
        b"".join(w.to_bytes(2, "little") for w in code)
        + strings
        + b"".join(p.to_bytes(4, "little") for p in pointers)
    )


def synthetic_pair(seed: int = 20240601, size: int = 256 * 1024, *, words: int = 400, inserted: int = 1024,
                   edits: int = 200) -> tuple[bytes, bytes]:
    """A firmware-like pair: Thumb-like code, a string pool (drawn from `words` distinct words) and
    a pointer table.

    The update inserts a function of `inserted` instructions a third of the way in, changes
    `edits` instructions and moves every pointer behind the insertion point, as a relink does.
    """
    rng = random.Random(seed)
    vocab = [rng.getrandbits(16) for _ in range(512)]
    code = [rng.choice(vocab) for _ in range(size * 3 // 8)]
    pool = [
        bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz_ ", k=rng.randint(3, 12)))
        for _ in range(words)
    ]
    strings = b"\0".join(rng.choice(pool) for _ in range(size // 40))
    pointers = sorted(FLASH_BASE + 2 * rng.randrange(len(code)) for _ in range(size // 64))
    at = len(code) // 3
    new_code = code[:at] + [rng.choice(vocab) for _ in range(inserted)] + code[at:]
    for _ in range(edits):
        new_code[rng.randrange(len(new_code))] = rng.choice(vocab)
    shift = 2 * (len(new_code) - len(code))
    new_pointers = [p + shift if p >= FLASH_BASE + 2 * at else p for p in pointers]
    return _image(code, strings, pointers), _image(new_code, strings + b"\0v2.0.1", new_pointers)


def rebuilt_pair(seed: int = 20241206, size: int = 2 << 20, *, kept: float = 0.25) -> tuple[bytes, bytes]:
    """A pair whose new image is mostly code with no counterpart in the old one, as when a module
    is rebuilt by another toolchain: pieces of 16 KiB, a `kept` share of them moved from the old
    image, the others new code whose instructions are half the old image's (so short matches keep
    turning up) and half unseen. Most of a diff's lookups there find no 6-byte match, but not for
    long enough to be stepped over (csrc/fd_diff.c, GRAMS_PAYOFF)."""
    rng = random.Random(seed)
    old_vocab = [rng.getrandbits(16).to_bytes(2, "little") for _ in range(64)]
    new_vocab = [rng.getrandbits(16).to_bytes(2, "little") for _ in range(512)]
    old = b"".join(rng.choices(old_vocab, k=size // 2))
    piece = 16 << 10
    pieces = []
    for _ in range(size // piece):
        if rng.random() < kept:
            at = rng.randrange(0, size - piece, 2)
            pieces.append(old[at:at + piece])
        else:
            pieces.append(b"".join(rng.choice(old_vocab if rng.random() < 0.5 else new_vocab)
                                   for _ in range(piece // 2)))
    return old, b"".join(pieces)
