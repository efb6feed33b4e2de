"""The update agent: the seven SIM cases and every refusal before the first flash write."""

from __future__ import annotations

import random

import pytest
from support import firmware_like, mutate

from fotadelta import package
from fotadelta.agent import Device, FumoResult, install
from fotadelta.package import signing
from fotadelta.sim import Sim, handoff

OPERATOR_A = bytes.fromhex("a1" * 16)
OPERATOR_B = bytes.fromhex("b2" * 16)
UNSECURED = bytes(16)
BLOCK = 1024

rng = random.Random(31)
OLD = firmware_like(rng, 20_000)
NEW = mutate(rng, OLD, 12)
KEY = signing.generate()
TRUST = signing.TrustStore.of([KEY.public_key()])


def _package(validation: bytes = UNSECURED, **kw: object) -> bytes:
    args: dict[str, object] = dict(make="Acme", model="S1", from_version="1.0", to_version="1.1",
                                   validation=validation, in_place=True, block_size=BLOCK)
    args.update(kw)
    return package.pack(OLD, NEW, KEY, **args)  # type: ignore[arg-type]


def _device(sim: Sim, **kw: object) -> Device:
    args: dict[str, object] = dict(make="Acme", model="S1", version="1.0", trust=TRUST, nvm=handoff(sim),
                                   block_size=BLOCK)
    args.update(kw)
    return Device.with_image(OLD, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("case", "package_string", "sim", "expected"),
    [
        ("A package, A-secured SIM", OPERATOR_A, Sim.secured(OPERATOR_A), FumoResult.SUCCESSFUL),
        ("unsecured package, A-secured SIM", UNSECURED, Sim.secured(OPERATOR_A), FumoResult.VALIDATION_FAILED),
        ("B package, A-secured SIM", OPERATOR_B, Sim.secured(OPERATOR_A), FumoResult.VALIDATION_FAILED),
        ("B package, unsecured SIM", OPERATOR_B, Sim(), FumoResult.SUCCESSFUL),
        ("unsecured package, unsecured SIM", UNSECURED, Sim(), FumoResult.SUCCESSFUL),
        # Policy (fotadelta.agent): an unsecured SIM of operator A holds no string to compare with.
        ("B-secured package, unsecured A SIM", OPERATOR_B, Sim(), FumoResult.SUCCESSFUL),
        ("A package, A SIM with updates not allowed", OPERATOR_A,
         Sim.secured(OPERATOR_A, update_allowed=False), FumoResult.NOT_ACCEPTABLE),
    ],
)
def test_sim_cases(case: str, package_string: bytes, sim: Sim, expected: FumoResult) -> None:
    device = _device(sim)
    outcome = install(device, _package(package_string))
    assert outcome.code == expected, (case, outcome)
    if expected == FumoResult.SUCCESSFUL:
        assert device.image() == NEW and device.version == "1.1"
    else:
        assert device.flash.operations == 0, case
        assert device.image() == OLD


def _refused(device: Device, data: bytes, code: FumoResult) -> None:
    outcome = install(device, data)
    assert outcome.code == code, outcome
    assert device.flash.operations == 0
    assert device.image() == OLD


def test_corrupt_package() -> None:
    data = bytearray(_package())
    data[len(data) // 2] ^= 1
    _refused(_device(Sim()), bytes(data), FumoResult.VALIDATION_FAILED)
    _refused(_device(Sim()), _package()[:-200], FumoResult.CORRUPTED_PACKAGE)


def test_untrusted_signer() -> None:
    stranger = signing.generate()
    data = package.pack(OLD, NEW, stranger, make="Acme", model="S1", from_version="1.0", to_version="1.1",
                        in_place=True, block_size=BLOCK)
    _refused(_device(Sim()), data, FumoResult.VALIDATION_FAILED)


def test_other_model_and_version() -> None:
    _refused(_device(Sim()), _package(model="S2"), FumoResult.PACKAGE_MISMATCH)
    _refused(_device(Sim(), version="0.9"), _package(), FumoResult.PACKAGE_MISMATCH)


def test_wrong_source_image() -> None:
    device = _device(Sim())
    device.flash.program(100, b"\x00")
    before = device.image()
    outcome = install(device, _package())
    assert outcome.code == FumoResult.PACKAGE_MISMATCH and device.flash.operations == 0
    assert device.image() == before


def test_needs_more_ram_than_the_device_has() -> None:
    _refused(_device(Sim(), ram=BLOCK), _package(), FumoResult.OUT_OF_MEMORY)


def test_plain_package_not_acceptable_on_single_slot() -> None:
    _refused(_device(Sim()), _package(in_place=False), FumoResult.NOT_ACCEPTABLE)


def test_application_agent_patches_a_file() -> None:
    from fotadelta.agent import Installed
    app_v1 = firmware_like(random.Random(2), 8000)
    app_v2 = mutate(random.Random(3), app_v1, 6)
    data = package.pack(app_v1, app_v2, KEY, make="Acme", model="S1", from_version="2.0", to_version="2.1",
                        content_type=package.ContentType.APPLICATION, target="app.bin")
    device = _device(Sim())
    assert install(device, data).code == FumoResult.PACKAGE_MISMATCH  # not installed yet
    device.applications["app.bin"] = Installed("2.0", app_v1)
    outcome = install(device, data)
    assert outcome.ok, outcome
    assert device.applications["app.bin"] == Installed("2.1", app_v2)
    assert device.flash.operations == 0 and device.version == "1.0"  # firmware untouched
    assert install(device, data).code == FumoResult.PACKAGE_MISMATCH  # already at 2.1


def test_configuration_agent_replaces_key_values() -> None:
    from fotadelta.agent import Installed, config_bytes
    old = config_bytes({"apn": "internet", "interval": "60"})
    new = config_bytes({"apn": "iot.example", "interval": "30", "tls": "on"})
    data = package.pack(old, new, KEY, make="Acme", model="S1", from_version="7", to_version="8",
                        content_type=package.ContentType.CONFIGURATION, target="modem")
    device = _device(Sim())
    device.configurations["modem"] = Installed("7", old)
    assert install(device, data).ok
    assert device.configurations["modem"] == Installed("8", new)
    bad = package.pack(new, b"[1, 2]", KEY, make="Acme", model="S1", from_version="8", to_version="9",
                       content_type=package.ContentType.CONFIGURATION, target="modem")
    outcome = install(device, bad)
    assert outcome.code == FumoResult.UPDATE_FAILED and device.configurations["modem"].version == "8"


def test_handoff_reads_ef_fota() -> None:
    sim = Sim.secured(OPERATOR_A, update_allowed=False)
    assert sim.read_ef_fota() == OPERATOR_A + b"\x00"
    nvm = handoff(sim)
    assert nvm.secured and not nvm.update_allowed and nvm.validation == OPERATOR_A
    with pytest.raises(ValueError):
        Sim(b"short")


def test_every_single_byte_change_refused_before_any_write() -> None:
    small = package.pack(OLD[:3000], mutate(random.Random(5), OLD[:3000], 3), KEY, make="Acme", model="S1",
                         from_version="1.0", to_version="1.1", in_place=True, block_size=256)
    for at in range(len(small)):
        damaged = bytearray(small)
        damaged[at] ^= 0xFF
        device = Device.with_image(OLD[:3000], make="Acme", model="S1", version="1.0", trust=TRUST,
                                           nvm=handoff(Sim()), block_size=256)
        outcome = install(device, bytes(damaged))
        assert outcome.code != FumoResult.SUCCESSFUL, at
        assert device.flash.operations == 0, f"byte {at} changed, yet flash was written"


def test_dense_sample_of_byte_changes_in_a_large_package() -> None:
    r = random.Random(8)
    old = firmware_like(r, 200_000)
    large = package.pack(old, mutate(r, old, 60), KEY, make="Acme", model="S1", from_version="1.0",
                         to_version="1.1", in_place=True, block_size=4096)
    device = Device.with_image(old, make="Acme", model="S1", version="1.0", trust=TRUST,
                                       nvm=handoff(Sim()), block_size=4096)
    for at in [*range(0, 200), *range(200, len(large), 7), len(large) - 1]:
        damaged = bytearray(large)
        damaged[at] ^= 0x01
        assert install(device, bytes(damaged)).code != FumoResult.SUCCESSFUL, at
    assert device.flash.operations == 0
    assert install(device, large).ok and device.image() != old


def test_power_cut_during_install_then_resume() -> None:
    from fotadelta.flash import PowerLoss
    data = _package(OPERATOR_A)
    for cut_after in (0, 3, 10, 25):
        device = _device(Sim.secured(OPERATOR_A))
        device.flash.arm(cut_after, seed=cut_after)
        with pytest.raises(PowerLoss):
            install(device, data)
        device.flash.arm(None)
        outcome = install(device, data)  # the next boot
        assert outcome.ok, (cut_after, outcome)
        assert device.image() == NEW and device.version == "1.1"
