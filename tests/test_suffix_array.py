"""The suffix sorter old-image indexes use (libdivsufsort, from the pydivsufsort wheel) gives the
same arrays as the C core's own fd_sais, so diffs do not depend on which one sorted."""

from __future__ import annotations

import array
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fotadelta import _core


def sorted_suffixes(text: bytes) -> list[int]:
    return sorted(range(len(text)), key=lambda i: text[i:])


def as_ints(sa: bytes) -> list[int]:
    return list(array.array("i", sa))


# Few distinct bytes make long repeats and equal prefixes, where suffix sorters differ if anywhere.
texts = st.one_of(st.binary(max_size=600),
                  st.lists(st.sampled_from(b"\x00\x01\xff"), max_size=600).map(bytes))


@settings(max_examples=300, deadline=None)
@given(texts)
def test_library_and_fd_sais_agree_with_the_definition(text: bytes) -> None:
    expected = sorted_suffixes(text)
    assert as_ints(_core.suffix_array(text)) == expected
    assert as_ints(_core.suffix_array(text, library=False)) == expected


def test_large_repetitive_and_random_texts_agree() -> None:
    rnd = random.Random(7).randbytes(1 << 16)
    for text in (rnd * 8, bytes(1 << 18), rnd[:4096] + bytes(1 << 17) + rnd, b"\xff\x00" * 70000 + rnd):
        assert _core.suffix_array(text) == _core.suffix_array(text, library=False)


# A child process that imports pydivsufsort (whose libgomp then starts with one thread per core)
# before fotadelta sorts: prints its thread count before and after sorting 1 MiB.
_IMPORTED_FIRST = """
import random, pydivsufsort
from fotadelta import _core

def threads():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))

before = threads()
_core.suffix_array(random.Random(3).randbytes(1 << 20))
print(before, threads())
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists() or (os.cpu_count() or 1) < 2,
                    reason="counts threads in /proc (Linux) and needs two cores for an OpenMP team")
def test_library_sorts_on_one_thread_even_when_pydivsufsort_was_imported_first() -> None:
    proc = subprocess.run([sys.executable, "-c", _IMPORTED_FIRST], capture_output=True, text=True, check=True)
    before, after = map(int, proc.stdout.split())
    assert after == before
