"""An emulated SIM with the EF_FOTA file, and the hand-off of its contents to device NVM.

EF_FOTA holds the operator's 16-byte validation string (all zero on an unsecured SIM) and a FOTA
condition byte whose lowest bit allows updates. At boot the device copies both into its NVM,
where the update agent reads them (docs/package-format.md, "SIM validation")."""

from __future__ import annotations

from dataclasses import dataclass

VALIDATION_LEN = 16
UPDATE_ALLOWED = 0x01
EF_FOTA_LEN = VALIDATION_LEN + 1


@dataclass(frozen=True)
class Sim:
    """A SIM card as far as FOTA is concerned."""

    validation: bytes = bytes(VALIDATION_LEN)
    condition: int = UPDATE_ALLOWED

    def __post_init__(self) -> None:
        if len(self.validation) != VALIDATION_LEN:
            raise ValueError(f"a SIM validation string is {VALIDATION_LEN} bytes")
        if not 0 <= self.condition <= 0xFF:
            raise ValueError("the FOTA condition is one byte")

    @classmethod
    def secured(cls, validation: bytes, *, update_allowed: bool = True) -> Sim:
        return cls(validation, UPDATE_ALLOWED if update_allowed else 0)

    def read_ef_fota(self) -> bytes:
        """The raw EF_FOTA file: validation string, then the condition byte."""
        return self.validation + bytes((self.condition,))


@dataclass(frozen=True)
class Nvm:
    """What the device keeps from the SIM for its update agent."""

    validation: bytes
    update_allowed: bool

    @property
    def secured(self) -> bool:
        return self.validation != bytes(VALIDATION_LEN)


def handoff(sim: Sim) -> Nvm:
    """Read EF_FOTA and copy it into device NVM, as the device does at boot."""
    raw = sim.read_ef_fota()
    if len(raw) != EF_FOTA_LEN:
        raise ValueError("EF_FOTA has the wrong length")
    return Nvm(raw[:VALIDATION_LEN], bool(raw[VALIDATION_LEN] & UPDATE_ALLOWED))
