"""OMA DM credentials: Basic and MD5 vectors, HMAC header round trips and tolerant parsing."""

from __future__ import annotations

import base64
import hashlib

import pytest

from fotadelta.dm import auth
from fotadelta.dm.auth import AuthError, HmacHeader

NONCE = b"Nonce"
BODY = b"<SyncML xmlns='SYNCML:SYNCML1.2'>...</SyncML>"


def test_basic_vector() -> None:
    assert auth.basic("Bruce2", "OhBehave") == "QnJ1Y2UyOk9oQmVoYXZl"


def test_check_basic() -> None:
    assert auth.check_basic("QnJ1Y2UyOk9oQmVoYXZl", "Bruce2", "OhBehave")
    assert auth.check_basic("  QnJ1Y2UyOk9oQmVoYXZl\n", "Bruce2", "OhBehave")
    assert not auth.check_basic("QnJ1Y2UyOk9oQmVoYXZl", "Bruce2", "OhBehavf")
    assert not auth.check_basic("QnJ1Y2UyOk9oQmVoYXZl", "Bruce3", "OhBehave")
    assert not auth.check_basic("", "Bruce2", "OhBehave")
    assert not auth.check_basic("QnJ1Y2UyOk9oQmVoYXZl\u00e9", "Bruce2", "OhBehave")


def test_md5_vector() -> None:
    assert auth.md5_digest("Bruce2", "OhBehave", NONCE) == "Zz6EivR3yeaaENcRN6lpAQ=="


def test_check_md5() -> None:
    cred = "Zz6EivR3yeaaENcRN6lpAQ=="
    assert auth.check_md5(cred, "Bruce2", "OhBehave", NONCE)
    assert auth.check_md5(f" {cred} ", "Bruce2", "OhBehave", NONCE)
    assert not auth.check_md5(cred, "Bruce2", "ohbehave", NONCE)
    assert not auth.check_md5(cred, "bruce2", "OhBehave", NONCE)
    assert not auth.check_md5(cred, "Bruce2", "OhBehave", b"nonce")
    assert not auth.check_md5(cred, "Bruce2", "OhBehave", b"")
    assert not auth.check_md5("", "Bruce2", "OhBehave", NONCE)


def test_md5_nonce_is_raw_bytes() -> None:
    # Binary nonces (the decoded NextNonce) go into the hash as they are.
    nonce = bytes(range(256))
    inner = base64.b64encode(hashlib.md5(b"u:p").digest())
    want = base64.b64encode(hashlib.md5(inner + b":" + nonce).digest()).decode()
    assert auth.md5_digest("u", "p", nonce) == want


def test_hmac_formula() -> None:
    inner = base64.b64encode(hashlib.md5(b"user:pwd").digest())
    body_hash = base64.b64encode(hashlib.md5(BODY).digest())
    raw = hashlib.md5(inner + b":" + NONCE + b":" + body_hash).digest()
    assert auth.mac_digest("user", "pwd", NONCE, BODY) == raw
    assert auth.hmac_mac("user", "pwd", NONCE, BODY) == base64.b64encode(raw).decode()


def test_hmac_header_round_trip() -> None:
    value = auth.hmac_header("user", "pwd", NONCE, BODY)
    mac = auth.hmac_mac("user", "pwd", NONCE, BODY)
    assert value == f'algorithm=MD5, username="user", mac={mac}'
    header = auth.parse_hmac_header(value)
    assert header == HmacHeader("MD5", "user", mac)
    assert auth.check_hmac(header, "pwd", NONCE, BODY)


@pytest.mark.parametrize("change", ["password", "nonce", "body", "user", "algorithm"])
def test_hmac_rejects_changes(change: str) -> None:
    header = auth.parse_hmac_header(auth.hmac_header("user", "pwd", NONCE, BODY))
    password, nonce, body = "pwd", NONCE, BODY
    if change == "password":
        password = "pwe"
    elif change == "nonce":
        nonce = b"nonce"
    elif change == "body":
        body = BODY + b" "
    elif change == "user":
        header = HmacHeader(header.algorithm, "User", header.mac)
    else:
        header = HmacHeader("SHA1", header.username, header.mac)
    assert not auth.check_hmac(header, password, nonce, body)


def test_hmac_accepts_hex_mac() -> None:
    raw = auth.mac_digest("user", "pwd", NONCE, BODY)
    for hex_text in (raw.hex(), raw.hex().upper()):
        mac = base64.b64encode(hex_text.encode()).decode()
        header = auth.parse_hmac_header(f"algorithm=MD5,username=user,mac={mac}")
        assert auth.check_hmac(header, "pwd", NONCE, BODY)
        assert not auth.check_hmac(header, "pwd", NONCE, BODY + b"x")


@pytest.mark.parametrize("mac", ["", "!!!!", "bm90IGEgbWFj", "QUJD", "\u00e9\u00e9\u00e9\u00e9"])
def test_hmac_rejects_bad_mac(mac: str) -> None:
    assert not auth.check_hmac(HmacHeader("MD5", "user", mac), "pwd", NONCE, BODY)


@pytest.mark.parametrize("value", [
    'algorithm=MD5, username="user", mac=TUFD',
    'algorithm=MD5,username="user",mac=TUFD',
    'algorithm=MD5,username=user,mac=TUFD',
    'algorithm="MD5", username="user", mac="TUFD"',
    'mac=TUFD, username="user", algorithm=MD5',
    'username="user", mac=TUFD',
    'ALGORITHM=md5, UserName="user", MAC=TUFD',
    '  algorithm = MD5 ,  username = "user" ,mac = TUFD  ',
    'algorithm=MD5, username="user", mac=TUFD, future="x y"',
])
def test_parse_hmac_header_variants(value: str) -> None:
    assert auth.parse_hmac_header(value) == HmacHeader("MD5", "user", "TUFD")


def test_parse_hmac_header_quoted_specials() -> None:
    header = auth.parse_hmac_header('username="a, b=c", mac="x=="')
    assert header == HmacHeader("MD5", "a, b=c", "x==")


@pytest.mark.parametrize("value", [
    "",
    "   ",
    "algorithm=MD5",
    'username="user"',
    "mac=TUFD",
    'username="user", mac=',
    'username="user", mac=""',
    'username="user" mac=TUFD',
    'username="user", mac=TUFD,',
    'username="user",, mac=TUFD',
    'username="user, mac=TUFD',
    'username=us"er, mac=TUFD',
    'username="user", mac=TUFD, mac=TUFE',
    'username="user", mac=TUFD, algorithm=',
    'username="user", mac=TUFD, algorithm=""',
    '=user, mac=TUFD',
    'username, mac=TUFD',
])
def test_parse_hmac_header_malformed(value: str) -> None:
    with pytest.raises(AuthError):
        auth.parse_hmac_header(value)


def test_auth_error_is_value_error() -> None:
    assert issubclass(AuthError, ValueError)


@pytest.mark.parametrize("user", ['a"b', "a\\b", "a\nb"])
def test_hmac_header_refuses_unquotable_user(user: str) -> None:
    with pytest.raises(AuthError):
        auth.hmac_header(user, "pwd", NONCE, BODY)


def test_unicode_credentials_are_utf8() -> None:
    assert auth.basic("J\u00fcrgen", "p\u00e4ss") == base64.b64encode(
        "J\u00fcrgen:p\u00e4ss".encode()).decode()
    header = auth.parse_hmac_header(auth.hmac_header("J\u00fcrgen", "p\u00e4ss", NONCE, BODY))
    assert header.username == "J\u00fcrgen"
    assert auth.check_hmac(header, "p\u00e4ss", NONCE, BODY)


def test_nonces_are_fresh() -> None:
    nonces = {auth.new_nonce() for _ in range(100)}
    assert len(nonces) == 100
    assert all(len(n) == 16 for n in nonces)
