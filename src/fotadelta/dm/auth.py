"""OMA DM 1.2 credentials: Basic, MD5 digest and the HMAC header (``x-syncml-hmac``).

Pure functions over strings and bytes. Credentials are UTF-8 encoded; nonces are the raw
bytes (the decoded NextNonce). The MD5 digest with a server's id and password is the
server credential; the same primitive (``mac_digest``) also authenticates package #0.
Checks compare in constant time. ``credential`` and ``challenge`` make the SyncML Cred and Chal
of a device's scheme (``md5``, ``basic`` or ``hmac``), for both ends."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from fotadelta.dm.model import Chal, Cred, Meta

NONCE_SIZE = 16
# The Cred/Chal type of each scheme (AAuthPref names); an unknown scheme is taken as md5.
CRED_TYPES = {"md5": "syncml:auth-md5", "basic": "syncml:auth-basic", "hmac": "syncml:auth-MAC"}


class AuthError(ValueError):
    """A credential or an HMAC header is malformed."""


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def _md5(data: bytes) -> bytes:
    return hashlib.md5(data).digest()


def _user_hash(user: str, password: str) -> bytes:
    """B64(MD5("user:pwd")), the stored-secret part shared by digest and HMAC."""
    return _b64(_md5(f"{user}:{password}".encode()))


def basic(user: str, password: str) -> str:
    """Basic credential: B64("user:pwd")."""
    return _b64(f"{user}:{password}".encode()).decode("ascii")


def check_basic(cred: str, user: str, password: str) -> bool:
    """Whether ``cred`` is the Basic credential of user/password."""
    return hmac.compare_digest(cred.strip().encode(), basic(user, password).encode())


def md5_digest(user: str, password: str, nonce: bytes) -> str:
    """MD5 digest credential: B64(MD5(B64(MD5("user:pwd")) + ":" + nonce))."""
    return _b64(_md5(_user_hash(user, password) + b":" + nonce)).decode("ascii")


def check_md5(cred: str, user: str, password: str, nonce: bytes) -> bool:
    """Whether ``cred`` is the MD5 digest of user/password for this nonce."""
    return hmac.compare_digest(cred.strip().encode(), md5_digest(user, password, nonce).encode())


def mac_digest(user: str, password: str, nonce: bytes, body: bytes) -> bytes:
    """Raw MD5(B64(MD5("user:pwd")) + ":" + nonce + ":" + B64(MD5(body))), 16 bytes.

    HMAC sends it base64-encoded; package #0 carries it raw, keyed by server id and password."""
    return _md5(_user_hash(user, password) + b":" + nonce + b":" + _b64(_md5(body)))


def hmac_mac(user: str, password: str, nonce: bytes, body: bytes) -> str:
    """The ``mac`` value of the HMAC header for this message body."""
    return _b64(mac_digest(user, password, nonce, body)).decode("ascii")


# Quotes, backslashes and control characters would not survive the quoted-string form.
_BAD_USERNAME = re.compile(r'["\\\x00-\x1f\x7f]')


def hmac_header(user: str, password: str, nonce: bytes, body: bytes) -> str:
    """The ``x-syncml-hmac`` header value, in the specification's form."""
    if _BAD_USERNAME.search(user):
        raise AuthError(f"user name {user!r} cannot be sent in an HMAC header")
    return f'algorithm=MD5, username="{user}", mac={hmac_mac(user, password, nonce, body)}'


@dataclass(frozen=True)
class HmacHeader:
    """A parsed ``x-syncml-hmac`` header; ``algorithm`` is upper-cased."""

    algorithm: str
    username: str
    mac: str


_PARAM = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"([^"]*)"|([^\s,"]+))\s*(?:,|$)')


def parse_hmac_header(value: str) -> HmacHeader:
    """Parse an ``x-syncml-hmac`` value: parameters in any order, keys case-insensitive,
    values quoted or not, with or without spaces after commas; unknown keys are ignored."""
    params: dict[str, str] = {}
    text = value.strip()
    pos = 0
    while pos < len(text):
        m = _PARAM.match(text, pos)
        if m is None:
            raise AuthError(f"malformed HMAC header near {text[pos:pos + 20]!r}")
        key = m.group(1).lower()
        if key in params:
            raise AuthError(f"HMAC header repeats {key!r}")
        params[key] = m.group(2) if m.group(2) is not None else m.group(3)
        pos = m.end()
        if text[pos - 1] == "," and pos == len(text):
            raise AuthError("HMAC header ends with a comma")
    for required in ("username", "mac"):
        if required not in params:
            raise AuthError(f"HMAC header lacks {required!r}")
    if not params["mac"]:
        raise AuthError("HMAC header has an empty mac")
    algorithm = params.get("algorithm", "MD5").upper()
    if not algorithm:
        raise AuthError("HMAC header has an empty algorithm")
    return HmacHeader(algorithm=algorithm, username=params["username"], mac=params["mac"])


def check_hmac(header: HmacHeader, password: str, nonce: bytes, body: bytes) -> bool:
    """Whether the header's mac authenticates ``body`` for its user (MD5 only).

    Accepts the mac as base64 of the raw digest and as base64 of its hex form, since
    deployed clients send both."""
    if header.algorithm.upper() != "MD5":
        return False
    try:
        got = base64.b64decode(header.mac.strip(), validate=True)
    except ValueError:  # binascii.Error, or a mac that is not ASCII
        return False
    want = mac_digest(header.username, password, nonce, body)
    if len(got) == 2 * len(want):
        return hmac.compare_digest(got.lower(), want.hex().encode("ascii"))
    return hmac.compare_digest(got, want)


def credential(scheme: str, user: str, password: str, nonce: bytes) -> Cred:
    """The SyncHdr Cred for ``scheme``: Basic, or the MD5 digest for this nonce (HMAC sends none)."""
    if scheme == "basic":
        return Cred(basic(user, password), CRED_TYPES["basic"])
    return Cred(md5_digest(user, password, nonce), CRED_TYPES["md5"])


def challenge(scheme: str, nonce: bytes) -> Chal:
    """A Chal asking for ``scheme``'s credentials with ``nonce`` as the NextNonce."""
    return Chal(Meta(format="b64", type=CRED_TYPES.get(scheme, CRED_TYPES["md5"]),
                     next_nonce=_b64(nonce).decode("ascii")))


def new_nonce() -> bytes:
    """A fresh random nonce (16 bytes)."""
    return secrets.token_bytes(NONCE_SIZE)
