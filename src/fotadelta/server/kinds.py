"""Capabilities per make, model and firmware version, as a fleet service: operators read what is
discovered and in force, and override it (server/capabilities.py keeps the records and layers them).

Reading takes the read permission; overriding, like the rest of the registry, devices.write. Every
override and removal is audited."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fotadelta.server.auth import Auth, Permission, Principal
from fotadelta.server.capabilities import DeviceCapability
from fotadelta.server.engine import DmServer

MAX_NAME = 64  # as the capabilities table's make, model and fw_version columns


@dataclass(frozen=True)
class CapabilityRecord:
    """One stored record: discovered from devices, or the operator's."""

    make: str
    model: str
    fw_version: str  # "" for every version
    source: str  # discovered | operator
    capability: dict[str, Any]


@dataclass(frozen=True)
class InForce:
    """The capability in force for a make/model at a version: the records laid over the defaults."""

    make: str
    model: str
    fw_version: str
    in_force: dict[str, Any]


def _check(make: str, model: str, fw_version: str) -> None:
    if not make or not model:
        raise ValueError("make and model are required")
    if max(len(make), len(model), len(fw_version)) > MAX_NAME:
        raise ValueError(f"make, model and fw_version are at most {MAX_NAME} characters")


class Capabilities:
    def __init__(self, server: DmServer, auth: Auth) -> None:
        self.server, self.auth = server, auth

    def records(self, actor: Principal) -> list[CapabilityRecord]:
        """Every stored record, discovered and the operator's."""
        self.auth.require(actor, Permission.READ, "capability.read")
        return [CapabilityRecord(str(r["make"]), str(r["model"]), str(r["fw_version"]), str(r["source"]),
                                 dict(r["capability"]))  # type: ignore[call-overload]
                for r in self.server.capabilities()]

    def in_force(self, actor: Principal, make: str, model: str, fw_version: str = "") -> InForce:
        self.auth.require(actor, Permission.READ, "capability.read", f"{make}/{model}")
        _check(make, model, fw_version)
        return InForce(make, model, fw_version, self.server.capability(make, model, fw_version).known())

    def override(self, actor: Principal, make: str, model: str, fw_version: str, values: dict[str, Any]) -> InForce:
        """Lay the operator's values (DeviceCapability fields) over its record for this make/model/version;
        ValueError if any is unknown or malformed."""
        target = f"{make}/{model}" + (f"/{fw_version}" if fw_version else "")
        self.auth.require(actor, Permission.DEVICES_WRITE, "capability.set", target)
        _check(make, model, fw_version)
        cap = DeviceCapability.from_known(values)
        self.server.set_capability(make, model, fw_version, cap)
        self.auth.audit(actor, "capability.set", target, detail=cap.known())
        return InForce(make, model, fw_version, self.server.capability(make, model, fw_version).known())

    def remove_override(self, actor: Principal, make: str, model: str, fw_version: str = "") -> InForce:
        """Remove the operator's record (what was discovered stays); the capability then in force."""
        target = f"{make}/{model}" + (f"/{fw_version}" if fw_version else "")
        self.auth.require(actor, Permission.DEVICES_WRITE, "capability.remove", target)
        _check(make, model, fw_version)
        self.server.set_capability(make, model, fw_version, None)
        self.auth.audit(actor, "capability.remove", target)
        return InForce(make, model, fw_version, self.server.capability(make, model, fw_version).known())


__all__ = ["Capabilities", "CapabilityRecord", "InForce"]
