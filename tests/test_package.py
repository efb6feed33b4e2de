"""Signed update packages: pack, verify, inspect, strict parsing, key rotation, tampering."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from support import firmware_like, mutate
from test_cli import assert_one_line_error, run

from fotadelta import inplace, package
from fotadelta.errors import PackageError
from fotadelta.package import signing

VALIDATION_A = bytes.fromhex("a1" * 16)


@pytest.fixture(scope="module")
def images() -> tuple[bytes, bytes]:
    r = random.Random(21)
    old = firmware_like(r, 30_000)
    return old, mutate(r, old, 15)


@pytest.fixture(scope="module")
def key() -> signing.PrivateKey:
    return signing.generate()


def _pack(images: tuple[bytes, bytes], key: signing.PrivateKey, **kw: object) -> bytes:
    old, new = images
    return package.pack(old, new, key, make="Acme", model="Sensor-1", from_version="1.0", to_version="1.1",
                        **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("in_place", [False, True], ids=["plain", "in-place"])
def test_pack_verify_and_apply(images: tuple[bytes, bytes], key: signing.PrivateKey, in_place: bool) -> None:
    old, new = images
    made = _pack(images, key, validation=VALIDATION_A, in_place=in_place, block_size=1024)
    checked = package.verify(made, signing.TrustStore.of([key.public_key()]))
    m = checked.manifest
    assert (m.make, m.model, m.from_version, m.to_version) == ("Acme", "Sensor-1", "1.0", "1.1")
    assert m.secured and m.validation == VALIDATION_A
    assert (m.source_size, m.target_size) == (len(old), len(new))
    if in_place:
        assert m.patch_kind == package.PatchKind.IN_PLACE and m.ram_need > 0 and m.block_size == 1024
        assert inplace.apply(old, checked.payload) == new
    else:
        assert m.patch_kind == package.PatchKind.PLAIN
        import fotadelta
        assert fotadelta.apply(old, checked.payload) == new


def test_ecdsa_and_key_rotation(images: tuple[bytes, bytes], key: signing.PrivateKey) -> None:
    new_key = signing.generate(signing.Algorithm.ECDSA_P256_SHA256)
    made = _pack(images, new_key)
    both = signing.TrustStore.of([key.public_key(), new_key.public_key()])
    assert package.verify(made, both).algorithm == signing.Algorithm.ECDSA_P256_SHA256
    with pytest.raises(PackageError, match="trusted key"):
        package.verify(made, signing.TrustStore.of([key.public_key()]))


def test_every_single_byte_change_is_refused(images: tuple[bytes, bytes], key: signing.PrivateKey) -> None:
    made = _pack(images, key, validation=VALIDATION_A)
    trust = signing.TrustStore.of([key.public_key()])
    for at in range(len(made)):
        damaged = bytearray(made)
        damaged[at] ^= 0x5A
        with pytest.raises(PackageError):
            package.verify(bytes(damaged), trust)


def test_truncation_and_trailing_bytes(images: tuple[bytes, bytes], key: signing.PrivateKey) -> None:
    made = _pack(images, key)
    for n in range(0, len(made), 97):
        with pytest.raises(PackageError):
            package.parse(made[:n])
    with pytest.raises(PackageError, match="signature length"):
        package.parse(made + b"\0")


def test_bad_fields_refused_at_pack_time(images: tuple[bytes, bytes], key: signing.PrivateKey) -> None:
    with pytest.raises(ValueError, match="validation string"):
        _pack(images, key, validation=b"short")
    old, new = images
    with pytest.raises(ValueError, match="make"):
        package.pack(old, new, key, make="", model="m", from_version="1", to_version="2")


def test_cli_keygen_pack_verify_inspect(images: tuple[bytes, bytes], tmp_path: Path) -> None:
    old, new = images
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    assert run("keygen", "-o", tmp_path / "k").returncode == 0
    assert run("keygen", "--algorithm", "p256", "-o", tmp_path / "k2").returncode == 0
    made = run("pack", tmp_path / "old", tmp_path / "new", "--key", tmp_path / "k", "--make", "Acme", "--model",
               "S1", "--from", "1.0", "--to", "1.1", "--validation-string", "a1" * 16, "-o", tmp_path / "u.pkg")
    assert made.returncode == 0, made.stderr
    ok = run("verify", tmp_path / "u.pkg", "--pubkey", tmp_path / "k2.pub", "--pubkey", tmp_path / "k.pub")
    assert ok.returncode == 0 and "signature OK" in ok.stdout
    assert_one_line_error(run("verify", tmp_path / "u.pkg", "--pubkey", tmp_path / "k2.pub"), "trusted key")
    described = json.loads(run("inspect", "--json", tmp_path / "u.pkg").stdout)
    assert described["make"] == "Acme" and described["validation"] == "a1" * 16
    assert described["patch_kind"] == "plain" and described["source_size"] == len(old)
    assert_one_line_error(run("pack", tmp_path / "old", tmp_path / "new", "--key", tmp_path / "k", "--make", "A",
                              "--model", "S", "--from", "1", "--to", "2", "--validation-string", "zz" * 16,
                              "-o", tmp_path / "x.pkg"), "--validation-string", "hexadecimal", status=2)
