"""Signed update packages (docs/package-format.md): a delta plus what a device checks before using it."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import asdict, dataclass
from enum import IntEnum
from typing import Any

from fotadelta import inplace
from fotadelta.delta import Buffer
from fotadelta.delta import diff as plain_diff
from fotadelta.delta.format import Kind, Patch
from fotadelta.errors import PackageError, PatchError
from fotadelta.inplace.format import InplaceHeader
from fotadelta.package.signing import KEY_ID_LEN, Algorithm, PrivateKey, TrustStore, algorithm_of, key_id, sign

__all__ = ["ANY_VERSION", "ContentType", "Manifest", "Package", "PatchKind", "check_payload", "check_signature",
           "pack", "parse", "unpack", "verify"]

MAGIC = b"FDPK"
FORMAT_VERSION = 2
VALIDATION_LEN = 16
NO_VALIDATION = bytes(VALIDATION_LEN)
ANY_VERSION = "*"  # from-version of a full image that installs over any version
MAX_TEXT = 64
MAX_SECURITY_VERSION = 0xFFFF_FFFF
FLAG_DOWNGRADE = 0x01  # the signer allows installing over a higher security version
_FIXED = struct.Struct("<4sBBBB16s32s32sIIIII")
_TRAILER = struct.Struct("<B8sH")


class ContentType(IntEnum):
    FIRMWARE = 1
    APPLICATION = 2
    CONFIGURATION = 3


class PatchKind(IntEnum):
    PLAIN = 1  # fotadelta plain patch (delta or full image), applied into a second slot
    IN_PLACE = 2  # fotadelta in-place patch, applied in a single slot
    FULL = 3  # the new image itself


@dataclass(frozen=True)
class Manifest:
    """What the package says about itself; all of it is signed."""

    content_type: ContentType
    patch_kind: PatchKind
    validation: bytes  # operator's SIM validation string; all zero = unsecured package
    source_sha256: bytes
    target_sha256: bytes
    source_size: int
    target_size: int
    ram_need: int
    block_size: int
    make: str
    model: str
    from_version: str
    to_version: str
    target: str  # what is updated: "firmware", an application's file name, a configuration's name
    security_version: int = 0  # of what the package installs; a device refuses a lower one than it runs...
    allow_downgrade: bool = False  # ...unless the signer allowed it here

    @property
    def secured(self) -> bool:
        return self.validation != NO_VALIDATION

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(content_type=self.content_type.name.lower(), patch_kind=self.patch_kind.name.lower().replace("_", "-"),
                 validation=self.validation.hex() if self.secured else None,
                 source_sha256=self.source_sha256.hex(), target_sha256=self.target_sha256.hex())
        return d


@dataclass(frozen=True)
class Package:
    """A parsed package. signed_bytes is everything the signature covers."""

    manifest: Manifest
    payload: bytes
    algorithm: Algorithm
    signer: bytes
    signature: bytes
    signed_bytes: bytes

    def to_dict(self) -> dict[str, Any]:
        return {**self.manifest.to_dict(), "payload_bytes": len(self.payload),
                "signature": {"algorithm": self.algorithm.name.lower(), "key_id": self.signer.hex()}}


def pack(old: Buffer, new: Buffer, key: PrivateKey, *, make: str, model: str, from_version: str,
         to_version: str, content_type: ContentType = ContentType.FIRMWARE, target: str = "firmware",
         validation: bytes = NO_VALIDATION, in_place: bool = False, block_size: int = inplace.DEFAULT_BLOCK,
         ram: int | None = None, full_image: bool = False, patch: bytes | None = None, security_version: int = 0,
         allow_downgrade: bool = False) -> bytes:
    """Make and sign a package taking old to new (a configuration's new state is a JSON object).

    full_image carries new itself; with from_version ANY_VERSION it installs over any version
    (old is then not used). patch is a plain or in-place patch (per in_place) made earlier from
    old and new, a build farm's cached delta: it is used instead of diffing again, once it agrees
    with old and new (PackageError otherwise), so re-signing a delta costs no diff.
    security_version is new's place in the anti-rollback order: a device refuses a package below
    the security version it runs, unless allow_downgrade."""
    if patch is not None and (full_image or content_type == ContentType.CONFIGURATION):
        raise ValueError("a full image or configuration package carries no patch")
    if not 0 <= security_version <= MAX_SECURITY_VERSION:
        raise ValueError(f"the security version must be 0 to {MAX_SECURITY_VERSION}")
    if from_version == ANY_VERSION:
        if not full_image:
            raise ValueError(f"only a full image can update from any version ({ANY_VERSION!r})")
        old = b""
    if full_image or content_type == ContentType.CONFIGURATION:
        payload, kind, ram_need, blocks = bytes(new), PatchKind.FULL, 0, 0
    elif in_place:
        # The device checks its slot, which holds flash contents (Intel HEX laid out), not HEX text.
        old, new = (image.data for image in inplace.flash_images(old, new))
        payload = inplace.diff(old, new, block_size=block_size, ram=ram) if patch is None else bytes(patch)
        h = InplaceHeader.parse(payload)
        kind, ram_need, blocks = PatchKind.IN_PLACE, h.work_need, h.block_size
    else:
        payload = plain_diff(old, new) if patch is None else bytes(patch)
        full = Patch.parse(payload).kind == Kind.FULL
        kind, ram_need, blocks = (PatchKind.FULL if full else PatchKind.PLAIN), 0, 0
        if full:
            payload = bytes(new)
    manifest = Manifest(content_type, kind, bytes(validation), hashlib.sha256(old).digest(),
                        hashlib.sha256(new).digest(), len(old), len(new), ram_need, blocks, make, model,
                        from_version, to_version, target, security_version, allow_downgrade)
    if patch is not None:
        _check_payload(manifest, payload)
    body = _encode_manifest(manifest) + struct.pack("<I", len(payload)) + payload
    algorithm, signer = algorithm_of(key), key_id(key.public_key())
    signed = body + bytes((algorithm,)) + signer
    signature = sign(key, signed)
    return signed + struct.pack("<H", len(signature)) + signature


def unpack(data: bytes) -> Package:
    """Read the fields, lengths and signature trailer, checking every one, without looking into the
    payload: what a signature check needs first. PackageError names the first problem."""
    data = bytes(data)
    if len(data) < _FIXED.size:
        raise PackageError("package is truncated")
    (magic, version, content, kind, flags, validation, source_sha, target_sha, source_size, target_size,
     ram_need, block_size, security_version) = _FIXED.unpack_from(data)
    if magic != MAGIC:
        raise PackageError("not a fotadelta update package (bad magic)")
    if version != FORMAT_VERSION:
        raise PackageError(f"unsupported package format version {version} (this build reads {FORMAT_VERSION})")
    if content not in ContentType.__members__.values():
        raise PackageError(f"unknown content type {content}")
    if kind not in PatchKind.__members__.values():
        raise PackageError(f"unknown patch kind {kind}")
    if flags & ~FLAG_DOWNGRADE:
        raise PackageError("reserved flag bits are set")
    pos = _FIXED.size
    texts = []
    for field in ("make", "model", "from-version", "to-version", "target"):
        if pos >= len(data):
            raise PackageError("package is truncated")
        n = data[pos]
        raw = data[pos + 1:pos + 1 + n]
        if not 1 <= n <= MAX_TEXT or len(raw) != n:
            raise PackageError(f"{field} field is empty, too long or truncated")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise PackageError(f"{field} field is not UTF-8") from None
        if not text.isprintable():
            raise PackageError(f"{field} field holds control characters")
        texts.append(text)
        pos += 1 + n
    if pos + 4 > len(data):
        raise PackageError("package is truncated")
    (payload_len,) = struct.unpack_from("<I", data, pos)
    pos += 4
    payload = data[pos:pos + payload_len]
    pos += payload_len
    if len(payload) != payload_len or pos + _TRAILER.size > len(data):
        raise PackageError("package is truncated")
    algorithm_byte, signer, sig_len = _TRAILER.unpack_from(data, pos)
    if algorithm_byte not in Algorithm.__members__.values():
        raise PackageError(f"unknown signature algorithm {algorithm_byte}")
    signed_end = pos + 1 + KEY_ID_LEN
    pos += _TRAILER.size
    if pos + sig_len != len(data):
        raise PackageError("signature length does not match the package length")
    make, model, from_version, to_version, target = texts
    manifest = Manifest(ContentType(content), PatchKind(kind), validation, source_sha, target_sha, source_size,
                        target_size, ram_need, block_size, make, model, from_version, to_version, target,
                        security_version, bool(flags & FLAG_DOWNGRADE))
    if manifest.from_version == ANY_VERSION and (manifest.patch_kind != PatchKind.FULL or source_size):
        raise PackageError(f"from-version {ANY_VERSION!r} is only for full images without a source")
    return Package(manifest, payload, Algorithm(algorithm_byte), signer, data[pos:], data[:signed_end])


def parse(data: bytes) -> Package:
    """Parse strictly, without checking the signature (inspect, publish): unpack, then check_payload."""
    return check_payload(unpack(data))


def verify(data: bytes, trust: TrustStore) -> Package:
    """The signature over the raw bytes first, then the payload: PackageError if anything is off."""
    return check_payload(check_signature(unpack(data), trust))


def check_signature(package: Package, trust: TrustStore) -> Package:
    """The signature check of verify, for a package already unpacked."""
    if not trust.verify(package.algorithm, package.signer, package.signature, package.signed_bytes):
        raise PackageError(f"signature does not verify with any trusted key (signer {package.signer.hex()})")
    return package


def _encode_manifest(m: Manifest) -> bytes:
    if len(m.validation) != VALIDATION_LEN:
        raise ValueError(f"the SIM validation string must be {VALIDATION_LEN} bytes")
    out = bytearray(_FIXED.pack(MAGIC, FORMAT_VERSION, m.content_type, m.patch_kind,
                                FLAG_DOWNGRADE if m.allow_downgrade else 0, m.validation, m.source_sha256,
                                m.target_sha256, m.source_size, m.target_size, m.ram_need, m.block_size,
                                m.security_version))
    for field, text in (("make", m.make), ("model", m.model), ("from-version", m.from_version),
                        ("to-version", m.to_version), ("target", m.target)):
        raw = text.encode("utf-8")
        if not 1 <= len(raw) <= MAX_TEXT or not text.isprintable():
            raise ValueError(f"{field} must be 1 to {MAX_TEXT} bytes of printable text")
        out += bytes((len(raw),)) + raw
    return bytes(out)


def check_payload(package: Package) -> Package:
    """The payload must be of the declared kind and agree with the manifest's sizes and needs.

    Only headers are read (nothing is decompressed), so this costs the same for any package."""
    _check_payload(package.manifest, package.payload)
    return package


def _check_payload(m: Manifest, payload: bytes) -> None:
    try:
        if m.patch_kind == PatchKind.FULL:
            if len(payload) != m.target_size:
                raise PackageError("full image length differs from the target size")
        elif m.patch_kind == PatchKind.IN_PLACE:
            h = InplaceHeader.parse(payload)
            if ((h.old_size, h.new_size, h.work_need, h.block_size) !=
                    (m.source_size, m.target_size, m.ram_need, m.block_size) or
                    h.new_digest != m.target_sha256[:len(h.new_digest)] or
                    h.old_digest != m.source_sha256[:len(h.old_digest)]):
                raise PackageError("in-place patch does not match the package's sizes, hashes or needs")
        else:
            patch = Patch.parse(payload)
            if (patch.old_size, patch.new_size) != (m.source_size, m.target_size) or m.ram_need or m.block_size:
                raise PackageError("patch does not match the package's sizes")
    except PatchError as exc:
        if isinstance(exc, PackageError):
            raise
        raise PackageError(f"payload is not a valid patch: {exc}") from None
