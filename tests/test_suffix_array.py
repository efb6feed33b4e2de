"""The suffix sorter old-image indexes use (libdivsufsort, from the pydivsufsort wheel) gives the
same arrays as the C core's own fd_sais, so diffs do not depend on which one sorted."""

from __future__ import annotations

import array
import random

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
