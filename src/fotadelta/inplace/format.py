"""The in-place patch header (docs/inplace.md): fixed fields and digests, then varints, parsed on
the host by the device's own parser (fd_ip_read_header)."""

from __future__ import annotations

import hashlib
import mmap
import struct
from dataclasses import dataclass
from enum import IntEnum

from fotadelta import _core
from fotadelta.delta.format import CODE_ARCHS, SPAN_MAX, SPAN_MIN, Grouping, encode_varint
from fotadelta.errors import PatchError

# The architectures whose copies an in-place patch may relocate: those of the device patcher
# (csrc/fd_ip_code.h, FD_IP_ARCHS): all nine of a host build.
RELOCATED_ARCHS = frozenset(a for a in CODE_ARCHS if _core.IP_ARCHS >> a & 1)

MAGIC = b"FDIP"
FORMAT_VERSION = 4
FIXED_SIZE = 33  # FD_IP_FIXED_SIZE: magic to arch, then the three digests; the varints follow
DIGEST_LEN = 8
_PATCH_DIGEST_AT = 25  # FD_IP_PATCH_DIGEST_AT
MAX_PARK = 32  # FD_IP_MAX_PARK
# Erase blocks the header can describe: a power of two, stored as its log2 (FD_IP_BLOCK_LOG_MIN/MAX).
MIN_BLOCK_LOG, MAX_BLOCK_LOG = 8, 17
MIN_BLOCK, MAX_BLOCK = 1 << MIN_BLOCK_LOG, 1 << MAX_BLOCK_LOG
IMAGE_MAX = (1 << 31) - 1  # FD_IP_IMAGE_MAX
MOVE_SIZE = 8  # FD_IP_MOVE_SIZE: a moves table entry, old offset and delta
MAX_MOVES = (1 << 24) - 1
LANES = 3  # FD_IP_LANES: control, literals, differences
# The largest payload decoder's work memory (three lanes with 2^16-byte windows, fd_lz_work_size; a
# test checks it against the C core): a patch asks for one block plus at most this.
MAX_DECODER_WORK = 199_290
# Decoded bytes per stored byte a compressed payload can reach: the MCU codec reaches about 16,800:1 on
# zeros, LZMA2 about 6,300:1. A header that declares more than the payload can hold is refused unread.
MAX_EXPANSION = 1 << 15
_FIXED = struct.Struct("<4sBBBBB8s8s8s")
assert _FIXED.size == FIXED_SIZE


class PayloadCodec(IntEnum):
    """How the payload is stored: as is, in the MCU codec, or LZMA for hosts."""

    STORED = 0
    LZ = 1
    LZMA = 2


# Header byte 5 holds the codec in bits 0-3 and the grouping of the differences in bits 4-7
# (csrc/fd_inplace.h FD_IP_FLAG_*): 0 the bytes of 4-byte words, BYTEWISE_FLAG single changed
# bytes, SUMS_FLAG 4-byte words as sums, (n + 1) << 4 the sums of spans of n bytes (2 to 4).
BYTEWISE_FLAG = 0x10
SUMS_FLAG = 0x20
_GROUPING_FLAGS = {(Grouping.WORDS, 0): 0, (Grouping.BYTES, 0): BYTEWISE_FLAG, (Grouping.SUMS, 0): SUMS_FLAG,
                   **{(Grouping.SPANS, n): (n + 1) << 4 for n in range(SPAN_MIN, SPAN_MAX + 1)}}
_FLAG_GROUPINGS = {flag: grouping for grouping, flag in _GROUPING_FLAGS.items()}


def digest(data: bytes | bytearray | memoryview | mmap.mmap) -> bytes:
    """SHA-256 truncated to 64 bits: what the device checks the source image, the new image and the
    patch against (accidents, not forgery: signed packages carry all 256 bits)."""
    return hashlib.sha256(data).digest()[:DIGEST_LEN]


@dataclass(frozen=True)
class InplaceHeader:
    """Everything the device needs to know before it touches flash."""

    codec: PayloadCodec
    block_size: int
    park_slots: int
    old_size: int
    new_size: int
    # Decoded bytes of each lane: control (steps, records, gaps between changed words or bytes),
    # the records' literals, the differences.
    lanes_raw: tuple[int, int, int]
    payload_len: int  # the moves table and the stored lanes
    work_need: int
    arch: int  # code relocated in copies (csrc/fd_ip_code.h), 0 for none
    moves: int  # entries of the moves table that starts the payload
    old_digest: bytes
    new_digest: bytes
    patch_digest: bytes  # of every other byte of the patch
    grouping: Grouping = Grouping.WORDS  # of the differences (BYTEWISE_FLAG, SUMS_FLAG, spans)
    span: int = 0  # bytes per span of Grouping.SPANS

    def _fixed(self) -> bytes:
        flag = _GROUPING_FLAGS.get((self.grouping, self.span))
        if flag is None:
            raise ValueError(f"grouping {self.grouping.name} with span {self.span}")
        return _FIXED.pack(MAGIC, FORMAT_VERSION, self.codec | flag, self.block_size.bit_length() - 1,
                           self.park_slots, self.arch, self.old_digest, self.new_digest, self.patch_digest)

    def _varints(self) -> bytes:
        return b"".join(map(encode_varint, (self.old_size, self.new_size, *self.lanes_raw, self.payload_len,
                                            self.work_need, self.moves)))

    def seal(self, payload: bytes) -> bytes:
        """The patch: this header with the digest of every other byte of it, then payload."""
        head, varints = self._fixed()[:_PATCH_DIGEST_AT], self._varints()
        return head + digest(head + varints + payload) + varints + payload

    @classmethod
    def parse(cls, patch: bytes) -> InplaceHeader:
        if len(patch) < FIXED_SIZE:
            raise PatchError("in-place patch is truncated")
        if patch[:4] != MAGIC:
            raise PatchError("not a fotadelta in-place patch (bad magic)")
        if patch[4] != FORMAT_VERSION:
            raise PatchError(f"unsupported in-place format version {patch[4]}")
        (codec, flag, block_log, park_slots, arch, old_size, new_size, lanes_raw, payload_len, work_need,
         moves, header_len) = _core.inplace_header(patch)
        grouping = _FLAG_GROUPINGS.get(flag << 4)
        if grouping is None or (arch and arch not in RELOCATED_ARCHS):
            raise PatchError("in-place patch header is malformed")
        if len(patch) != header_len + payload_len:
            raise PatchError("in-place patch length does not match its header")
        if moves * MOVE_SIZE > payload_len:
            raise PatchError("in-place patch's moves table is longer than its payload")
        _check_declared(codec, 1 << block_log, park_slots, old_size, new_size, lanes_raw,
                        payload_len - moves * MOVE_SIZE, work_need)
        old_digest, new_digest, patch_digest = _FIXED.unpack_from(patch)[6:]
        return cls(PayloadCodec(codec), 1 << block_log, park_slots, old_size, new_size, lanes_raw, payload_len,
                   work_need, arch, moves, old_digest, new_digest, patch_digest, *grouping)

    @property
    def payload_raw(self) -> int:
        """Decoded payload bytes, all lanes."""
        return sum(self.lanes_raw)

    @property
    def header_len(self) -> int:
        """Bytes of the header: where the payload (the moves table, then the lanes) starts."""
        return FIXED_SIZE + len(self._varints())

    @property
    def lanes_start(self) -> int:
        """Offset of the stored lanes in the patch: after the header and the moves table."""
        return self.header_len + self.moves * MOVE_SIZE


# Blocks after the slot besides the park slots: the scratch block and the journal's two (Layout).
SPARE_BLOCKS = 3


def slot_blocks(block_size: int, image_size: int) -> int:
    """The erase blocks of the slot an image of image_size bytes is rewritten in: at least one."""
    return max(-(-image_size // block_size), 1)


def _check_declared(codec: int, block_size: int, park_slots: int, old_size: int, new_size: int,
                    lanes_raw: tuple[int, int, int], lanes_len: int, work_need: int) -> None:
    """The sizes a header declares must be ones its payload can produce, so that nothing sized by
    them (work memory, an emulated slot, decoded lanes) is allocated on a header's word alone.
    lanes_len: the stored lanes' bytes (the payload after the moves table)."""
    if not block_size <= work_need <= block_size + MAX_DECODER_WORK:
        raise PatchError("in-place patch asks for implausible work memory")
    raw = sum(lanes_raw)
    stored = codec == PayloadCodec.STORED
    if (stored and raw != lanes_len) or (not stored and raw > lanes_len * MAX_EXPANSION):
        raise PatchError("in-place payload cannot decode to the lengths its header declares")
    # Every block the new image has beyond the old one's is a step, and a step takes at least one
    # byte of the control lane.
    if -(-new_size // block_size) > -(-old_size // block_size) + lanes_raw[0]:
        raise PatchError("in-place patch declares a new image larger than its payload can build")
    # The patcher addresses flash with 32 bits: the slot and the blocks after it must lie below 4 GiB.
    if (slot_blocks(block_size, max(old_size, new_size)) + SPARE_BLOCKS + park_slots) * block_size > 1 << 32:
        raise PatchError("in-place patch declares images larger than 32-bit flash addresses reach")


def is_inplace(patch: bytes) -> bool:
    return patch[:4] == MAGIC
