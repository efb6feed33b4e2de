"""OMA download descriptors: generation, safe parsing, prompts and language choice."""

from __future__ import annotations

import random

import pytest
from support import firmware_like, mutate

from fotadelta import package
from fotadelta.errors import PackageError
from fotadelta.package import descriptor, signing


@pytest.fixture(scope="module")
def dd() -> tuple[bytes, int]:
    r = random.Random(3)
    old = firmware_like(r, 10_000)
    made = package.pack(old, mutate(r, old, 5), signing.generate(), make="Acme", model="S1", from_version="1.0",
                        to_version="1.1")
    manifest = package.parse(made).manifest
    return descriptor.make(manifest, len(made), "http://127.0.0.1:8080/dl/1",
                           install_notify_uri="http://127.0.0.1:8080/notify/1"), len(made)


def test_round_trip_and_prompts(dd: tuple[bytes, int]) -> None:
    xml, size = dd
    assert xml.startswith(b"<?xml")
    d = descriptor.parse(xml)
    assert (d.object_uri, d.size, d.mime_type) == ("http://127.0.0.1:8080/dl/1", size, descriptor.PACKAGE_MIME_TYPE)
    assert d.install_notify_uri.endswith("/notify/1") and d.vendor == "Acme"
    for phase in descriptor.PHASES:
        assert set(d.prompts[phase]) == set(descriptor.LANGUAGES)
        assert all(text for text in d.prompts[phase].values())
    assert "1.1" in d.prompt("post-update", devinfo_lang="en-US")


@pytest.mark.parametrize(("msisdn", "lang", "expected"), [
    ("+4915112345678", None, "de"),
    ("0033612345678", "en", "fr"),
    ("+34600123456", None, "es"),
    ("+447700900123", "de", "en"),
    ("+81312345678", "fr-FR", "fr"),   # Japan: not carried, falls back to DevInfo/Lang
    (None, "es_MX", "es"),
    (None, None, "en"),
    ("+81312345678", "ja", "en"),
])
def test_language_choice(msisdn: str | None, lang: str | None, expected: str) -> None:
    assert descriptor.choose_language(msisdn, lang) == expected


def test_prompt_in_device_language(dd: tuple[bytes, int]) -> None:
    d = descriptor.parse(dd[0])
    assert d.prompt("pre-download", msisdn="+49151000000") == d.prompts["pre-download"]["de"]
    assert d.prompt("pre-update", msisdn="+33600000000") == d.prompts["pre-update"]["fr"]


def test_hostile_and_malformed_xml() -> None:
    bomb = (b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
            b'<media xmlns="http://www.openmobilealliance.org/xmlns/dd"><objectURI>&b;</objectURI></media>')
    for bad, message in ((bomb, "not acceptable XML"), (b"<media", "not acceptable XML"),
                         (b"<other/>", "root"), (b'<media xmlns="http://www.openmobilealliance.org/xmlns/dd"/>',
                                                  "objectURI"),
                         (b"x" * (descriptor.MAX_DESCRIPTOR + 1), "too large")):
        with pytest.raises(PackageError, match=message):
            descriptor.parse(bad)
