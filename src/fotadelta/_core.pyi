"""Type stubs for the Cython binding of the C core (src/fotadelta/_core.pyx)."""

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeAlias

from fotadelta.flash import Flash

_Buffer: TypeAlias = bytes | bytearray | memoryview | Any
_Progress: TypeAlias = Callable[[int, int], None] | None

class OldIndex:
    old: _Buffer
    def __init__(self, old: _Buffer, threads: int = ...) -> None: ...
    def diff_streams(self, new: _Buffer, min_gain: int = ..., min_match: int = ...,
                     progress: _Progress = ...) -> tuple[tuple[bytes, bytes, bytes, bytes], dict[str, int]]: ...

_Ranges: TypeAlias = Sequence[tuple[int, int, int, int]]  # (arch, start, length, addr)
_Moves: TypeAlias = Sequence[tuple[int, int]]  # (from, delta)
_Code: TypeAlias = tuple[int, _Ranges, _Ranges, _Moves] | None  # (block_log, old ranges, new ranges, old moves)

CODE_MAX_RANGES: int
CODE_BLOCK_LOG_MIN: int
CODE_BLOCK_LOG_MAX: int

CODE_MAX_MOVES: int

def code_transform(image: _Buffer, block_log: int, ranges: _Ranges, inverse: bool = ...,
                   moves: _Moves | None = ...) -> bytes: ...
def code_sites(image: _Buffer, block_log: int, ranges: _Ranges) -> bytes: ...
def apply_memory(old: _Buffer, ctrl: _Buffer, wmap: _Buffer, words: _Buffer, extra: _Buffer,
                 new_len: int, code: _Code = ...) -> bytes: ...
def apply_stream(old: _Buffer, ctrl_read: Callable[[int], bytes], wmap_read: Callable[[int], bytes],
                 words_read: Callable[[int], bytes], extra_read: Callable[[int], bytes],
                 write: Callable[[bytes], object], new_len: int, chunk: int = ..., code: _Code = ...) -> None: ...

class _PayloadSource(Protocol):
    def open(self, start: int, length: int) -> None: ...
    def read(self, lane: int, n: int) -> bytes: ...

IP_MOVE_SIZE: int
IP_ARCHS: int

def inplace_payload(index: OldIndex, new: _Buffer, block_size: int, park_slots: int, min_gain: int = ...,
                    progress: _Progress = ..., old: _Buffer | None = ..., match_new: _Buffer | None = ...,
                    arch: int = ..., table: bytes = ...,
                    copy_min: int = ...) -> tuple[tuple[bytes, bytes, bytes], list[int], dict[str, int]]: ...
def inplace_apply(flash: Flash, slot: int, slot_size: int, scratch: int, park: int, park_blocks: int,
                  journal: int, patch: bytes, source: _PayloadSource | None, work_len: int,
                  lz: bool = ...) -> int: ...
def inplace_state(flash: Flash, slot: int, slot_size: int, scratch: int, park: int, park_blocks: int,
                  journal: int, patch: bytes) -> int: ...
def inplace_strerror(rc: int) -> str: ...

LZ_WINDOW_LOG_MIN: int
LZ_WINDOW_LOG_MAX: int
LZ_MAX_LANES: int

def lz_compress(data: _Buffer, window_log: int = ...) -> bytes: ...
def lz_compress_lanes(lanes: Sequence[_Buffer], window_logs: Sequence[int], turns: Sequence[int]) -> bytes: ...
def lz_decompress(data: _Buffer, raw_len: int, step: int = ...) -> bytes: ...
def lz_decompress_lanes(data: _Buffer, turns: Sequence[int], nlanes: int, step: int = ...) -> list[bytes]: ...
def lz_work_size(*window_logs: int) -> int: ...
