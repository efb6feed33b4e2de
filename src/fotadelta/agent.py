"""The device's update agents: every check before anything is written, then the update.

One agent per content type: firmware goes through the in-place patcher into the flash slot,
applications are files patched and replaced whole, configurations are sets of key/values
replaced whole. They report OMA FUMO result codes.

SIM policy: a SIM carrying a validation string accepts only packages carrying the same string; a
SIM without one (unsecured) accepts any package, whichever operator secured it, because it holds
nothing to compare with; a clear "update allowed" bit in the SIM's FOTA condition refuses every
package.

Anti-rollback: every package carries the signed security version of what it installs; the device
keeps the security version of what it runs (firmware, and each application and configuration)
and refuses a lower one unless the package is signed as an allowed downgrade."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import IntEnum

from fotadelta import inplace, package
from fotadelta.delta import apply as plain_apply
from fotadelta.errors import PackageError, PatchError
from fotadelta.flash import Flash
from fotadelta.inplace.format import InplaceHeader
from fotadelta.package import ContentType, PatchKind
from fotadelta.package.signing import TrustStore
from fotadelta.sim import Nvm


class FumoResult(IntEnum):
    """OMA FUMO result codes the agents report."""

    SUCCESSFUL = 200
    CORRUPTED_PACKAGE = 402
    PACKAGE_MISMATCH = 403
    VALIDATION_FAILED = 404
    NOT_ACCEPTABLE = 405
    UPDATE_FAILED = 410
    OUT_OF_MEMORY = 502


@dataclass(frozen=True)
class Outcome:
    code: FumoResult
    message: str

    @property
    def ok(self) -> bool:
        return self.code == FumoResult.SUCCESSFUL


@dataclass(frozen=True)
class Installed:
    """An application file or a configuration on the device, at a version."""

    version: str
    content: bytes
    security_version: int = 0


@dataclass
class Device:
    """A single-slot device: identity, flash (slot and spare blocks), RAM, NVM, files and settings."""

    make: str
    model: str
    version: str
    flash: Flash
    layout: inplace.Layout
    image_size: int
    ram: int
    trust: TrustStore
    nvm: Nvm
    security_version: int = 0  # of the firmware it runs (kept in its NVM)
    applications: dict[str, Installed] = field(default_factory=dict)
    configurations: dict[str, Installed] = field(default_factory=dict)

    @classmethod
    def with_image(cls, image: bytes, *, make: str, model: str, version: str, trust: TrustStore, nvm: Nvm,
                   block_size: int = inplace.DEFAULT_BLOCK, park_blocks: int = 8, write_size: int = 4,
                   ram: int | None = None, slot_size: int | None = None) -> Device:
        """A device whose slot (at least twice the image, in whole blocks) holds image."""
        slot = slot_size if slot_size is not None else -(-2 * len(image) // block_size) * block_size
        layout = inplace.Layout.after_slot(block_size, slot, park_blocks)
        flash = Flash(layout.geometry(block_size, write_size))
        flash.program(layout.slot, image)
        return cls(make, model, version, flash, layout, len(image),
                   block_size + inplace.DEFAULT_DECODER_RAM if ram is None else ram, trust, nvm)

    def image(self) -> bytes:
        return self.flash.read(self.layout.slot, self.image_size)


def config_bytes(settings: dict[str, str]) -> bytes:
    """The canonical form of a configuration: what its packages diff and hash."""
    return json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()


def install(device: Device, data: bytes) -> Outcome:
    """Check a package against the device and, if everything holds, hand it to its agent.

    The signature is checked over the raw bytes before anything of the payload is looked at."""
    try:
        pkg = package.unpack(data)
    except PackageError as exc:
        return Outcome(FumoResult.CORRUPTED_PACKAGE, str(exc))
    try:
        package.check_signature(pkg, device.trust)
    except PackageError as exc:
        return Outcome(FumoResult.VALIDATION_FAILED, str(exc))
    try:
        package.check_payload(pkg)
    except PackageError as exc:
        return Outcome(FumoResult.CORRUPTED_PACKAGE, str(exc))
    m = pkg.manifest
    if (m.make, m.model) != (device.make, device.model):
        return Outcome(FumoResult.PACKAGE_MISMATCH, f"package is for {m.make} {m.model}")
    if device.nvm.secured and m.validation != device.nvm.validation:
        return Outcome(FumoResult.VALIDATION_FAILED, "package does not carry this SIM's validation string")
    if not device.nvm.update_allowed:
        return Outcome(FumoResult.NOT_ACCEPTABLE, "the SIM's FOTA condition does not allow updates")
    store = device.applications if m.content_type == ContentType.APPLICATION else device.configurations
    if m.content_type == ContentType.FIRMWARE:
        running = device.security_version
    else:
        running = store[m.target].security_version if m.target in store else 0
    if m.security_version < running and not m.allow_downgrade:
        return Outcome(FumoResult.NOT_ACCEPTABLE, f"package has security version {m.security_version}, below the "
                       f"{running} the device runs (a rollback, not signed as an allowed downgrade)")
    if m.content_type == ContentType.FIRMWARE:
        return _firmware(device, pkg)
    return _replace_whole(store, pkg)


def _firmware(device: Device, pkg: package.Package) -> Outcome:
    m = pkg.manifest
    if m.from_version not in (device.version, package.ANY_VERSION):
        return Outcome(FumoResult.PACKAGE_MISMATCH, f"package updates from {m.from_version}, device runs "
                       f"{device.version}")
    if m.patch_kind == PatchKind.FULL:
        return _full_image(device, pkg)
    if m.patch_kind != PatchKind.IN_PLACE:
        return Outcome(FumoResult.NOT_ACCEPTABLE, "this single-slot device takes in-place patches or full images, "
                       "not plain patches")
    # After a power cut mid-update the slot is part new: the journal, not the image, says so.
    resuming = inplace.update_state(device.flash, device.layout, pkg.payload) != "none"
    if not resuming and (m.source_size != device.image_size or
                         hashlib.sha256(device.image()).digest() != m.source_sha256):
        return Outcome(FumoResult.PACKAGE_MISMATCH, "the device's image is not the package's source image")
    g = device.flash.geometry
    if m.block_size != g.block_size:
        return Outcome(FumoResult.PACKAGE_MISMATCH, f"package is for {m.block_size}-byte blocks, flash has "
                       f"{g.block_size}")
    if m.ram_need > device.ram:
        return Outcome(FumoResult.OUT_OF_MEMORY, f"update needs {m.ram_need} bytes of RAM, device has {device.ram}")
    h = InplaceHeader.parse(pkg.payload)  # the package parser has checked it already
    if max(m.source_size, m.target_size) > device.layout.slot_size or h.park_slots > device.layout.park_blocks:
        return Outcome(FumoResult.OUT_OF_MEMORY, "the update needs more flash than the device sets aside")
    try:
        inplace.apply_on_flash(device.flash, device.layout, pkg.payload)
    except PatchError as exc:
        return Outcome(FumoResult.UPDATE_FAILED, str(exc))
    if hashlib.sha256(device.flash.read(device.layout.slot, m.target_size)).digest() != m.target_sha256:
        return Outcome(FumoResult.UPDATE_FAILED, "the updated image does not match the package's target hash")
    device.version, device.image_size, device.security_version = m.to_version, m.target_size, m.security_version
    return Outcome(FumoResult.SUCCESSFUL, f"firmware updated {m.from_version} -> {m.to_version}")


def _full_image(device: Device, pkg: package.Package) -> Outcome:
    """Write a full image over the slot, block by block.

    It needs nothing of the old image, so after a power cut the same call simply writes it again:
    the package, kept in the device's download storage, is the only source."""
    m = pkg.manifest
    if m.target_size > device.layout.slot_size:
        return Outcome(FumoResult.OUT_OF_MEMORY, f"the image is {m.target_size} bytes, the slot "
                       f"{device.layout.slot_size}")
    g = device.flash.geometry
    image = pkg.payload
    for offset in range(0, len(image), g.block_size):
        chunk = image[offset:offset + g.block_size]
        device.flash.erase(device.layout.slot + offset)
        device.flash.write(device.layout.slot + offset, chunk + b"\xff" * (-len(chunk) % g.write_size))
    if hashlib.sha256(device.flash.read(device.layout.slot, m.target_size)).digest() != m.target_sha256:
        return Outcome(FumoResult.UPDATE_FAILED, "the written image does not match the package's target hash")
    previous, device.version, device.image_size = device.version, m.to_version, m.target_size
    device.security_version = m.security_version
    return Outcome(FumoResult.SUCCESSFUL, f"firmware replaced {previous} -> {m.to_version} (full image)")


def _replace_whole(store: dict[str, Installed], pkg: package.Package) -> Outcome:
    """Applications and configurations: build the new content beside the old, then swap it in."""
    m = pkg.manifest
    kind = m.content_type.name.lower()
    current = store.get(m.target)
    if current is None or current.version != m.from_version:
        found = "not installed" if current is None else f"at {current.version}"
        return Outcome(FumoResult.PACKAGE_MISMATCH, f"{kind} {m.target} is {found}, package updates from "
                       f"{m.from_version}")
    if hashlib.sha256(current.content).digest() != m.source_sha256:
        return Outcome(FumoResult.PACKAGE_MISMATCH, f"{kind} {m.target} is not the package's source")
    if m.patch_kind == PatchKind.IN_PLACE:
        return Outcome(FumoResult.NOT_ACCEPTABLE, f"in-place patches are for firmware, not for a {kind}")
    try:
        new = pkg.payload if m.patch_kind == PatchKind.FULL else plain_apply(current.content, pkg.payload)
    except PatchError as exc:
        return Outcome(FumoResult.UPDATE_FAILED, str(exc))
    if hashlib.sha256(new).digest() != m.target_sha256:
        return Outcome(FumoResult.UPDATE_FAILED, f"the new {kind} does not match the package's target hash")
    if m.content_type == ContentType.CONFIGURATION:
        try:
            settings = json.loads(new)
        except ValueError:
            settings = None
        if not isinstance(settings, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                     for k, v in settings.items()):
            return Outcome(FumoResult.UPDATE_FAILED, "the configuration is not an object of string keys and values")
    store[m.target] = Installed(m.to_version, new, m.security_version)
    return Outcome(FumoResult.SUCCESSFUL, f"{kind} {m.target} updated {m.from_version} -> {m.to_version}")
