"""What an in-place patch rewrites: the bytes of a flash slot. Intel HEX text and UF2 blocks are not
what a device's flash holds, so such an image is taken as the flash contents it programs
(docs/inplace.md#intel-hex-and-uf2)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from fotadelta import _core
from fotadelta.delta import Buffer

ERASED = 0xFF  # what flash reads where a HEX or UF2 file programs nothing (gaps between its records)
# Data this far or farther after the slot's last record is another memory (nRF UICR, STM32 option
# bytes, EEPROM sit hundreds of MiB above the code), which a slot rewrite cannot update: left out.
GAP_MAX = 1 << 20
# The largest slot a HEX or UF2 image may span (gaps included): far more than any MCU's flash, and a
# bound on what a hostile file can make the host allocate.
SPAN_MAX = 64 << 20

_OP_RUN, _OP_AT = 0, 1  # csrc/fd_hex.h layout operations (any other: a record of another type)
_EXTENDED_SEGMENT, _EXTENDED_LINEAR = 2, 4  # Intel HEX record types that set the upper address
# UF2 blocks (csrc/fd_uf2.h): their size, the header's flags, address and payload size, the flag of
# blocks that are not for the main flash (comments, sources), and where the payload starts.
_UF2_BLOCK = 512
_UF2_HEADER = struct.Struct("<8xIII")
_UF2_NOT_MAIN_FLASH = 1
_UF2_DATA_AT = 32


@dataclass(frozen=True)
class Region:
    """Data bytes a HEX or UF2 image programs at one address."""

    address: int
    data: Buffer


@dataclass(frozen=True)
class FlashImage:
    """The image a device's slot holds: a binary as it is, or a HEX or UF2 image's records laid
    out from base (gaps erased); left_out are its records beyond the slot, which the patch does not
    write. layer names the file format ("ihex", "uf2"; "" for a binary)."""

    data: Buffer
    base: int = 0
    layer: str = ""
    left_out: tuple[Region, ...] = ()

    @property
    def left_out_bytes(self) -> int:
        """The data bytes of the records beyond the slot."""
        return sum(len(r.data) for r in self.left_out)


def hex_regions(text: Buffer) -> list[Region] | None:
    """The data records of Intel HEX text with their full addresses, in file order; None when the
    text is not Intel HEX (the checks are those of the plain engine's HEX layer, csrc/fd_hex.c)."""
    split = _core.hex_split(text)
    if split is None:
        return None
    payload, layout = split
    at, used, upper, expected = 1, 0, 0, 0
    out: list[Region] = []

    def varint() -> int:
        nonlocal at
        value = shift = 0
        while True:
            b = layout[at]
            at += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value

    def record(addr: int, length: int) -> None:
        nonlocal used, expected
        out.append(Region(upper + addr, payload[used:used + length]))
        used += length
        expected = (addr + length) & 0xFFFF

    while at < len(layout):
        op = layout[at]
        at += 1
        if op == _OP_RUN:
            count, length = varint(), varint()
            for _ in range(count):
                record(expected, length)
        elif op == _OP_AT:
            addr = varint()
            record(addr, varint())
        else:
            kind = layout[at]
            at += 1
            varint()
            length = varint()
            value = int.from_bytes(layout[at:at + length], "big")
            at += length
            if kind == _EXTENDED_LINEAR:
                upper = value << 16
            elif kind == _EXTENDED_SEGMENT:
                upper = value << 4
    return out


def uf2_regions(image: Buffer) -> list[Region] | None:
    """The payloads of a UF2 image's blocks for the main flash with their addresses, in file
    order; None when the image is not UF2 (the checks are those of the plain engine's UF2 layer,
    csrc/fd_uf2.c)."""
    if _core.uf2_split(image) is None:
        return None
    view = memoryview(image)
    out = []
    for at in range(0, len(view), _UF2_BLOCK):
        flags, address, size = _UF2_HEADER.unpack_from(view, at)
        if not flags & _UF2_NOT_MAIN_FLASH:
            out.append(Region(address, bytes(view[at + _UF2_DATA_AT:at + _UF2_DATA_AT + size])))
    return out


_LAYERS = {"ihex": ("Intel HEX", hex_regions), "uf2": ("UF2", uf2_regions)}


def flash_image(image: Buffer) -> FlashImage:
    """The image as the slot holds it: Intel HEX or UF2 laid out from its lowest address,
    anything else byte for byte. ValueError when a HEX or UF2 image's records overlap or span
    more than SPAN_MAX."""
    for layer, (name, regions) in _LAYERS.items():
        found = regions(image)
        if found is None:
            continue
        ordered = sorted((r for r in found if r.data), key=lambda r: r.address)
        if not ordered:
            raise ValueError(f"the {name} image programs no data")
        return _lay_out(ordered, layer)
    return FlashImage(image)


def flash_images(old: Buffer, new: Buffer) -> tuple[FlashImage, FlashImage]:
    """Both images as the slot holds them; ValueError unless both are of one format (Intel HEX,
    UF2 or binary) and HEX or UF2 images start at the same address (the slot's)."""
    pair = flash_image(old), flash_image(new)
    if pair[0].layer != pair[1].layer:
        raise ValueError(f"OLD is {format_name(pair[0].layer)} and NEW is {format_name(pair[1].layer)}: give "
                         "both in one format")
    if pair[0].base != pair[1].base:
        raise ValueError(f"the {format_name(pair[0].layer)} images start at different addresses "
                         f"(0x{pair[0].base:X}, 0x{pair[1].base:X}); an in-place patch rewrites one slot")
    return pair


def format_name(layer: str) -> str:
    """How a flash image's layer is called in messages ("Intel HEX", "UF2", "a binary")."""
    return _LAYERS[layer][0] if layer else "a binary"


def _lay_out(ordered: list[Region], layer: str) -> FlashImage:
    name = format_name(layer)
    for before, after in zip(ordered, ordered[1:]):
        if after.address < before.address + len(before.data):
            raise ValueError(f"{name} records overlap at 0x{after.address:X}")
    base = end = ordered[0].address
    inside = 0
    while inside < len(ordered) and ordered[inside].address - end < GAP_MAX:
        end = ordered[inside].address + len(ordered[inside].data)
        if end - base > SPAN_MAX:
            raise ValueError(f"the {name} image spans more than {SPAN_MAX >> 20} MiB of flash from 0x{base:X}")
        inside += 1
    data = bytearray([ERASED]) * (end - base)
    for r in ordered[:inside]:
        data[r.address - base:r.address - base + len(r.data)] = r.data
    return FlashImage(bytes(data), base, layer, tuple(ordered[inside:]))
