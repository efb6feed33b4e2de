"""What an in-place patch rewrites: the bytes of a flash slot. Intel HEX text is not what a device's
flash holds, so a HEX image is taken as the flash contents it programs (docs/inplace.md#intel-hex)."""

from __future__ import annotations

from dataclasses import dataclass

from fotadelta import _core
from fotadelta.delta import Buffer

ERASED = 0xFF  # what flash reads where a HEX file programs nothing (gaps between its records)
# Data this far or farther after the slot's last record is another memory (nRF UICR, STM32 option
# bytes, EEPROM sit hundreds of MiB above the code), which a slot rewrite cannot update: left out.
GAP_MAX = 1 << 20
# The largest slot a HEX image may span (gaps included): far more than any MCU's flash, and a bound
# on what hostile text can make the host allocate.
SPAN_MAX = 64 << 20

_OP_RUN, _OP_AT = 0, 1  # csrc/fd_hex.h layout operations (any other: a record of another type)
_EXTENDED_SEGMENT, _EXTENDED_LINEAR = 2, 4  # Intel HEX record types that set the upper address


@dataclass(frozen=True)
class Region:
    """Data bytes a HEX image programs at one address."""

    address: int
    data: Buffer


@dataclass(frozen=True)
class FlashImage:
    """The image a device's slot holds: a binary as it is, or a HEX image's records laid out from
    base (gaps erased); left_out are its records beyond the slot, which the patch does not write."""

    data: Buffer
    base: int = 0
    hex: bool = False
    left_out: tuple[Region, ...] = ()

    @property
    def left_out_bytes(self) -> int:
        """The data bytes of the records beyond the slot."""
        return sum(len(r.data) for r in self.left_out)


def regions(text: Buffer) -> list[Region] | None:
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


def flash_image(image: Buffer) -> FlashImage:
    """The image as the slot holds it: Intel HEX laid out from its lowest address, anything else
    byte for byte. ValueError when a HEX image's records overlap or span more than SPAN_MAX."""
    found = regions(image)
    if found is None:
        return FlashImage(image)
    ordered = sorted((r for r in found if r.data), key=lambda r: r.address)
    if not ordered:
        raise ValueError("the Intel HEX image programs no data")
    return _lay_out(ordered)


def flash_images(old: Buffer, new: Buffer) -> tuple[FlashImage, FlashImage]:
    """Both images as the slot holds them; ValueError unless both or neither are Intel HEX and HEX
    images start at the same address (the slot's)."""
    pair = flash_image(old), flash_image(new)
    if pair[0].hex != pair[1].hex:
        raise ValueError("one image is Intel HEX and the other is not: give both as HEX or both as binaries")
    if pair[0].base != pair[1].base:
        raise ValueError(f"the Intel HEX images start at different addresses (0x{pair[0].base:X}, "
                         f"0x{pair[1].base:X}); an in-place patch rewrites one slot")
    return pair


def _lay_out(ordered: list[Region]) -> FlashImage:
    for before, after in zip(ordered, ordered[1:]):
        if after.address < before.address + len(before.data):
            raise ValueError(f"Intel HEX records overlap at 0x{after.address:X}")
    base = end = ordered[0].address
    inside = 0
    while inside < len(ordered) and ordered[inside].address - end < GAP_MAX:
        end = ordered[inside].address + len(ordered[inside].data)
        if end - base > SPAN_MAX:
            raise ValueError(f"the Intel HEX image spans more than {SPAN_MAX >> 20} MiB of flash from 0x{base:X}")
        inside += 1
    data = bytearray([ERASED]) * (end - base)
    for r in ordered[:inside]:
        data[r.address - base:r.address - base + len(r.data)] = r.data
    return FlashImage(bytes(data), base, True, tuple(ordered[inside:]))
