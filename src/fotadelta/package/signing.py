"""Signing keys for update packages: Ed25519 by default, ECDSA P-256 as an option (`cryptography`)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

KEY_ID_LEN = 8
# The order of P-256's group: an ECDSA signature (r, s) verifies as (r, n - s) too, so only the low
# half is accepted and made, which leaves one signature per package and key.
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


class Algorithm(IntEnum):
    """Signature algorithms, as stored in a package (one byte)."""

    ED25519 = 1
    ECDSA_P256_SHA256 = 2


def generate(algorithm: Algorithm = Algorithm.ED25519) -> PrivateKey:
    if algorithm == Algorithm.ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def algorithm_of(key: PrivateKey | PublicKey) -> Algorithm:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return Algorithm.ED25519
    if isinstance(key.curve, ec.SECP256R1):
        return Algorithm.ECDSA_P256_SHA256
    raise ValueError(f"unsupported elliptic curve {key.curve.name}: use Ed25519 or P-256")


def key_id(key: PublicKey) -> bytes:
    """First 8 bytes of SHA-256 over the public key's DER encoding: names the key in a package."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).digest()[:KEY_ID_LEN]


def sign(key: PrivateKey, message: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(message)
    r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
    return encode_dss_signature(r, min(s, P256_ORDER - s))


def _canonical_ecdsa(signature: bytes) -> bool:
    """A DER signature in its one accepted form: minimal DER, s in the low half of the group order."""
    try:
        r, s = decode_dss_signature(signature)
    except ValueError:
        return False
    return 0 < s <= P256_ORDER // 2 and encode_dss_signature(r, s) == signature


def private_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_pem(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private(pem: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError("the signing key must be Ed25519 or ECDSA P-256")
    algorithm_of(key)
    return key


def load_public(pem: bytes) -> PublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise ValueError("a trusted key must be Ed25519 or ECDSA P-256")
    algorithm_of(key)
    return key


@dataclass(frozen=True)
class TrustStore:
    """The public keys a device accepts packages from; several, so keys can be rotated."""

    keys: tuple[PublicKey, ...]

    @classmethod
    def of(cls, keys: Iterable[PublicKey]) -> TrustStore:
        return cls(tuple(keys))

    def verify(self, algorithm: int, signer: bytes, signature: bytes, message: bytes) -> bool:
        """True when a trusted key with this id and algorithm made the signature over message."""
        for key in self.keys:
            if key_id(key) != signer or algorithm_of(key) != algorithm:
                continue
            try:
                if isinstance(key, ed25519.Ed25519PublicKey):
                    key.verify(signature, message)
                elif _canonical_ecdsa(signature):
                    key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
                else:
                    return False
            except InvalidSignature:
                return False
            return True
        return False
