"""Turn an archive member into the firmware image a device or a user would have.

- ``raw``: the member as it is (a .bin, .efi, .fd, ELF, .hex text, firmware blob);
- ``intel-hex``: Intel HEX text flattened to a flash image of an address range (0xFF in gaps);
- ``uflash-hex`` / ``uflash-bin``: the micro:bit MicroPython runtime that uflash.py embeds as
  an Intel HEX string, as that text or flattened to a flash image;
- ``esptool-stub``: an esptool flasher stub (JSON with base64 segments): text then data.
"""

from __future__ import annotations

import base64
import binascii
import json
import re

from fotadelta.inplace.flashimage import hex_regions
from fotadelta.samples.catalogue import Image


class ImageError(ValueError):
    """A member does not hold what its extractor expects."""


def intel_hex_image(text: bytes, start: int, end: int) -> bytes:
    """Flatten the data records of Intel HEX ``text`` that fall in [start, end) to an image
    starting at ``start`` and ending at the highest written address; gaps are 0xFF."""
    found = hex_regions(text)
    if found is None:
        raise ImageError("not Intel HEX text (a record's start code, length, hex digits or checksum is wrong)")
    image = bytearray(b"\xff" * (end - start))
    high = -1
    for r in found:
        first, last = max(r.address, start), min(r.address + len(r.data), end)
        if first < last:
            image[first - start:last - start] = r.data[first - r.address:last - r.address]
            high = max(high, last)
    if high < 0:
        raise ImageError(f"no Intel HEX data in [{start:#x}, {end:#x})")
    return bytes(image[: high - start])


def uflash_runtime_hex(source: bytes) -> bytes:
    """The Intel HEX text of the MicroPython runtime embedded in uflash.py."""
    match = re.search(rb'^_RUNTIME = """(.*?)"""', source, re.S | re.M)
    if match is None:
        raise ImageError("no _RUNTIME hex string in uflash.py")
    return match.group(1).strip() + b"\n"


def esptool_stub(source: bytes) -> bytes:
    """An esptool flasher stub's text segment followed by its data segment."""
    try:
        stub = json.loads(source)
        return base64.b64decode(stub["text"], validate=True) + base64.b64decode(stub.get("data") or "",
                                                                                 validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise ImageError(f"not an esptool stub: {exc}") from None


def extract(spec: Image, member: bytes) -> bytes:
    """The image ``spec`` describes, from the bytes of its archive member."""
    if spec.extract == "raw":
        return member
    if spec.extract == "esptool-stub":
        return esptool_stub(member)
    if spec.extract == "uflash-hex":
        return uflash_runtime_hex(member)
    text = uflash_runtime_hex(member) if spec.extract == "uflash-bin" else member
    assert spec.region is not None  # the catalogue requires one for flattening extractors
    return intel_hex_image(text, *spec.region)
