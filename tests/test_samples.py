"""fotadelta.samples: the catalogue, the bounded archive readers, the image extractors, the
fetcher over real loopback HTTP (sha256 pins, tampering, missing files, cache) and where the
demo finds its firmware from an empty directory, online and offline."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import lzma
import random
import struct
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest
import zstandard
from rich.console import Console

from fotadelta import demo
from fotadelta.samples import archives, catalogue, fetch, images
from fotadelta.samples import demo as demo_firmware
from fotadelta.samples.archives import ArchiveError, read_members
from fotadelta.samples.catalogue import CatalogueError
from fotadelta.samples.fetch import Fetcher
from support import REPO, load_script

# ---------------------------------------------------------------- archives made here


def tar_bytes(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return out.getvalue()


def ar_member(name: str, data: bytes) -> bytes:
    header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
    return header + data + (b"\n" if len(data) & 1 else b"")


def deb_bytes(files: dict[str, bytes], compression: str = "xz", links: dict[str, str] | None = None) -> bytes:
    """A Debian package as dpkg-deb lays it out: ar of debian-binary, control.tar.xz, data.tar.*."""
    data = tar_bytes({f"./{k}": v for k, v in files.items()}, links)
    packed = {"xz": lzma.compress, "gz": gzip.compress,
              "zst": zstandard.ZstdCompressor().compress}[compression](data)
    control = lzma.compress(tar_bytes({"./control": b"Package: test\n"}))
    return (b"!<arch>\n" + ar_member("debian-binary", b"2.0\n") + ar_member("control.tar.xz", control)
            + ar_member(f"data.tar.{compression}", packed))


def wheel_bytes(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return out.getvalue()


def hex_record(kind: int, address: int, data: bytes) -> str:
    body = bytes([len(data)]) + address.to_bytes(2, "big") + bytes([kind]) + data
    return ":" + (body + bytes([-sum(body) & 0xFF])).hex().upper()


def intel_hex(chunks: dict[int, bytes]) -> str:
    lines = []
    for address, data in chunks.items():
        lines.append(hex_record(0x04, 0, (address >> 16).to_bytes(2, "big")))
        for i in range(0, len(data), 16):
            lines.append(hex_record(0x00, (address + i) & 0xFFFF, data[i:i + 16]))
    return "\n".join([*lines, hex_record(0x01, 0, b"")]) + "\n"


# ---------------------------------------------------------------- the shipped catalogue


def test_shipped_catalogue_is_broad_and_consistent() -> None:
    cat = catalogue.load()
    bench = cat.select("bench")
    assert len(bench) >= 40
    families = {catalogue.arch_family(p.arch) for p in bench}
    assert {"Cortex-M", "Xtensa", "RISC-V", "AArch64", "x86-64"} <= families
    assert {"elf", "pe-uefi", "bin", "intel-hex"} <= {p.format for p in bench}
    assert {"wifi", "gpu", "bluetooth", "bootloader"} <= {p.kind for p in bench}
    sizes = [p.new.size for p in bench]
    assert min(sizes) < 16 << 10 and max(sizes) > 25 << 20
    assert all(p.old.sha256 != p.new.sha256 for p in cat.pairs)  # a pair is a real change
    origins = {cat.sources[i.source].archive for p in bench for i in (p.old, p.new)}
    assert origins == {"debian", "debian-security", "pypi"}
    # The demo set is one chain of consecutive releases: each new image is the next old one.
    chain = cat.select("demo")
    assert len(chain) >= 3 and all(a.new.sha256 == b.old.sha256 for a, b in zip(chain, chain[1:]))


def test_heldout_set_is_kept_apart() -> None:
    """The held-out pairs are their own set only, PyPI wheels' x86-64 .so files, and are
    fetched into a directory of their own, not the benchmark's default corpus."""
    cat = catalogue.load()
    held = cat.select("heldout")
    assert len(held) == 44 and all(p.sets == ("heldout",) and p.name.startswith("heldout-") for p in held)
    assert {p.category for p in held} == {"x86-64/elf/shared-library"}
    assert {cat.sources[i.source].archive for p in held for i in (p.old, p.new)} == {"pypi"}
    assert not any("heldout" in p.sets for p in cat.select("bench"))
    dests = load_script(REPO / "firmware_samples" / "fetch.py", "fotadelta_fetch_under_test").DEFAULT_DEST
    assert set(dests) == set(catalogue.SETS)
    assert dests["heldout"].name == "heldout" and dests["heldout"] not in {dests[s] for s in dests if s != "heldout"}


CATALOGUE_OK = """
[sources.a]
archive = "debian"
package = "p"
version = "1"
origin = "bookworm"
path = "pool/main/p/p_1_all.deb"
size = 10
sha256 = "%s"

[[pairs]]
name = "x"
sets = ["bench"]
arch = "aarch64"
format = "bin"
kind = "bootloader"
description = "d"
old = { source = "a", member = "usr/lib/a", size = 1, sha256 = "%s" }
new = { source = "a", member = "usr/lib/b", size = 1, sha256 = "%s" }
""" % ("0" * 64, "1" * 64, "2" * 64)


@pytest.mark.parametrize("bad, message", [
    ('member = "usr/lib/a"', 'member = "../../etc/passwd"'),
    ('member = "usr/lib/b"', 'member = "/etc/passwd"'),
    ('sets = ["bench"]', 'sets = ["nightly"]'),
    ('archive = "debian"', 'archive = "github"'),
    ('size = 10', 'size = 10000000000'),
    ('source = "a", member = "usr/lib/a"', 'source = "b", member = "usr/lib/a"'),
    ('"%s" }' % ("2" * 64), '"%s" }' % ("2" * 63 + "G")),
    ('arch = "aarch64"', 'arch = "x86-16/32"'),
])
def test_catalogue_refuses_malformed_entries(bad: str, message: str) -> None:
    assert catalogue.parse(CATALOGUE_OK).pairs[0].category == "aarch64/bin/bootloader"
    with pytest.raises(CatalogueError):
        catalogue.parse(CATALOGUE_OK.replace(bad, message))


# ---------------------------------------------------------------- archives


@pytest.mark.parametrize("compression", ["xz", "zst", "gz"])
def test_deb_members_are_read_by_name(tmp_path: Path, compression: str) -> None:
    files = {"usr/lib/firmware/a.bin": b"A" * 5000, "usr/share/b.efi": bytes(range(256)) * 7}
    path = tmp_path / "p_1_all.deb"
    path.write_bytes(deb_bytes(files, compression))
    assert read_members(path, ["usr/lib/firmware/a.bin", "./usr/share/b.efi"], 1 << 20) == files
    with pytest.raises(ArchiveError, match="no member usr/nothing"):
        read_members(path, ["usr/nothing"], 1 << 20)
    with pytest.raises(ArchiveError, match="over the 100 byte bound"):
        read_members(path, ["usr/lib/firmware/a.bin"], 100)


def test_archive_names_cannot_point_outside(tmp_path: Path) -> None:
    path = tmp_path / "evil.tar.gz"
    path.write_bytes(gzip.compress(tar_bytes({"../../etc/passwd": b"x", "/abs/file": b"y", "ok/f": b"z"})))
    assert read_members(path, ["ok/f"], 10) == {"ok/f": b"z"}
    # A traversing or absolute name never matches anything the catalogue can ask for.
    assert archives.normalise("../../etc/passwd") == "" and archives.normalise("/abs/file") == ""
    with pytest.raises(ArchiveError):
        read_members(path, ["../../etc/passwd"], 10)


def test_links_are_refused_with_their_target(tmp_path: Path) -> None:
    path = tmp_path / "l_1_all.deb"
    path.write_bytes(deb_bytes({"usr/lib/real.bin": b"r"}, links={"./usr/lib/alias.bin": "real.bin"}))
    with pytest.raises(ArchiveError, match=r"not a regular file \(a link to real.bin\)"):
        read_members(path, ["usr/lib/alias.bin"], 10)


def test_decompression_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bomb_1_all.deb"
    path.write_bytes(deb_bytes({"usr/zeros": bytes(4 << 20), "usr/last": b"x"}))
    assert path.stat().st_size < 8 << 10
    monkeypatch.setattr(archives, "MAX_EXPANDED", 1 << 20)
    with pytest.raises(ArchiveError, match="expands to more than its bound"):
        read_members(path, ["usr/last"], 10)


def test_corrupt_deb_and_zip_give_clear_errors(tmp_path: Path) -> None:
    deb = tmp_path / "x_1_all.deb"
    deb.write_bytes(b"!<arch>\n" + b"garbage" * 20)
    with pytest.raises(ArchiveError, match="x_1_all.deb"):
        read_members(deb, ["a"], 10)
    whl = tmp_path / "x-1-py3-none-any.whl"
    whl.write_bytes(b"PK not a zip")
    with pytest.raises(ArchiveError, match="x-1-py3-none-any.whl"):
        read_members(whl, ["a"], 10)
    good = tmp_path / "y-1-py3-none-any.whl"
    good.write_bytes(wheel_bytes({"pkg/fw.bin": b"F" * 100}))
    assert read_members(good, ["pkg/fw.bin"], 100) == {"pkg/fw.bin": b"F" * 100}
    with pytest.raises(ArchiveError, match="over the bound"):
        read_members(good, ["pkg/fw.bin"], 99)


# ---------------------------------------------------------------- images


def test_intel_hex_is_flattened_with_erased_gaps() -> None:
    text = intel_hex({0x1000: b"\x01\x02\x03\x04", 0x1010: b"\xaa" * 20, 0x20000: b"outside"})
    image = images.intel_hex_image(text.encode(), 0x1000, 0x2000)
    assert image == b"\x01\x02\x03\x04" + b"\xff" * 12 + b"\xaa" * 20
    broken = text.replace(text.splitlines()[1], text.splitlines()[1][:-2] + "00")
    with pytest.raises(images.ImageError, match="not Intel HEX"):
        images.intel_hex_image(broken.encode(), 0x1000, 0x2000)
    with pytest.raises(images.ImageError, match="no Intel HEX data"):
        images.intel_hex_image(text.encode(), 0x3000, 0x4000)


def test_esptool_stub_and_uflash_runtime() -> None:
    stub = json.dumps({"text": base64.b64encode(b"code").decode(), "data": base64.b64encode(b"data").decode(),
                       "entry": 1}).encode()
    assert images.esptool_stub(stub) == b"codedata"
    with pytest.raises(images.ImageError):
        images.esptool_stub(b'{"text": "!!"}')
    hex_text = intel_hex({0: b"\x10\x20"})
    source = f'import os\n_RUNTIME = """{hex_text}"""\n'.encode()
    assert images.uflash_runtime_hex(source) == hex_text.strip().encode() + b"\n"


# ---------------------------------------------------------------- fetching over loopback HTTP


class _Handler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        self.server.requests.append(self.path)  # type: ignore[attr-defined]


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        """The fetcher hangs up on purpose (an oversized download): not worth a traceback."""


@pytest.fixture()
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str, list[str]]]:
    """A real HTTP server on loopback serving a directory; yields (dir, base URL, request log)."""
    root = tmp_path / "www"
    root.mkdir()
    server = _Server(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}", server.requests  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def serve_release_chain(root: Path) -> tuple[str, list[bytes]]:
    """Publish a .deb, a wheel and an sdist holding four releases of one image, and return a
    catalogue for them: a demo chain of three releases (deb -> wheel -> sdist) and a bench pair."""
    r = [bytes([i]) * 3000 + b"firmware release %d" % i + bytes(range(256)) * (i + 4) for i in range(4)]
    files = {
        "pool/main/f/fw/fw_1_all.deb": deb_bytes({"usr/lib/firmware/fw.bin": r[0], "usr/lib/firmware/other": r[3]}),
        "packages/ab/fw-2-py3-none-any.whl": wheel_bytes({"fw/fw.bin": r[1]}),
        "packages/cd/fw-3.tar.gz": gzip.compress(tar_bytes({"fw-3/fw.hex": intel_hex({0x8000: r[2]}).encode()})),
    }
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    text = ""
    for sid, (path, data) in zip(("deb1", "whl2", "sdist3"), files.items(), strict=True):
        archive = "debian" if path.endswith(".deb") else "pypi"
        text += (f'[sources.{sid}]\narchive = "{archive}"\npackage = "fw"\nversion = "{sid[-1]}"\n'
                 f'origin = "test"\npath = "{path}"\nsize = {len(data)}\nsha256 = "{sha(data)}"\n\n')

    def side(source: str, member: str, image: bytes, extra: str = "") -> str:
        return f'{{ source = "{source}", member = "{member}"{extra}, size = {len(image)}, sha256 = "{sha(image)}" }}'

    sides = [side("deb1", "usr/lib/firmware/fw.bin", r[0]), side("whl2", "fw/fw.bin", r[1]),
             side("sdist3", "fw-3/fw.hex", r[2], ', extract = "intel-hex", region = [0x8000, 0x10000]')]
    for i, (old, new) in enumerate(zip(sides, sides[1:])):
        text += (f'[[pairs]]\nname = "fw-release-1.{i}-1.{i + 1}"\nsets = ["demo"]\narch = "cortex-m4"\n'
                 f'format = "bin"\nkind = "application"\ndescription = "test chain"\nold = {old}\nnew = {new}\n\n')
    text += ('[[pairs]]\nname = "fw-other"\nsets = ["bench"]\narch = "x86-64"\nformat = "blob"\nkind = "wifi"\n'
             f'description = "second member"\nold = {sides[0]}\n'
             f'new = {side("deb1", "usr/lib/firmware/other", r[3])}\n')
    return text, r


def test_fetch_over_http_checks_and_caches(http_root: tuple[Path, str, list[str]], tmp_path: Path) -> None:
    root, url, requests = http_root
    text, releases = serve_release_chain(root)
    cat = catalogue.parse(text)
    fetcher = Fetcher(cat, tmp_path / "cache", mirrors={"debian": url, "pypi": url}, progress=False)
    outcomes = fetcher.fetch(list(cat.pairs), tmp_path / "out")
    assert [o.error for o in outcomes] == [None] * 3
    assert (tmp_path / "out" / "fw-release-1.1-1.2" / "new").read_bytes() == releases[2]
    assert (tmp_path / "out" / "fw-other" / "new").read_bytes() == releases[3]
    assert sorted(requests) == sorted(f"/{p}" for p in (s.path for s in cat.sources.values()))
    manifest = (tmp_path / "out" / "MANIFEST.tsv").read_text().splitlines()
    assert manifest[0].split("\t") == list(fetch.MANIFEST_COLUMNS)
    assert manifest[1].split("\t")[9] == "cortex-m4/bin/application" and len(manifest) == 4
    # A second run downloads nothing and rewrites nothing.
    requests.clear()
    again = fetcher.fetch(list(cat.pairs), tmp_path / "out")
    assert requests == [] and not any(o.fetched for o in again)
    # An extracted image altered on disk is extracted again, from the cached archive.
    (tmp_path / "out" / "fw-other" / "new").write_bytes(b"changed")
    assert fetcher.fetch(list(cat.pairs), tmp_path / "out")[2].fetched and requests == []


def test_tampered_and_missing_archives_fail_only_their_pairs(http_root: tuple[Path, str, list[str]],
                                                             tmp_path: Path) -> None:
    root, url, _ = http_root
    text, releases = serve_release_chain(root)
    cat = catalogue.parse(text)
    cache = tmp_path / "cache"
    fetcher = Fetcher(cat, cache, mirrors={"debian": url, "pypi": url}, progress=False)
    wheel = root / "packages/ab/fw-2-py3-none-any.whl"
    good = wheel.read_bytes()
    wheel.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # same size, one bit changed
    errors = {o.pair.name: o.error for o in fetcher.fetch(list(cat.pairs), tmp_path / "out")}
    assert errors["fw-other"] is None  # its archive was fine: it is there
    assert "sha256 mismatch, refused" in (errors["fw-release-1.0-1.1"] or "")
    assert "pypi:fw==2" in (errors["fw-release-1.0-1.1"] or "")
    assert not (tmp_path / "out" / "fw-release-1.0-1.1").exists()
    assert not list((cache / "downloads").glob("fw-2*")), "a refused archive must not enter the cache"

    wheel.write_bytes(good)
    (root / "packages/cd/fw-3.tar.gz").unlink()
    fresh = Fetcher(cat, tmp_path / "cache2", mirrors={"debian": url, "pypi": url}, progress=False)
    errors = {o.pair.name: o.error for o in fresh.fetch(list(cat.pairs), tmp_path / "out2")}
    assert errors["fw-release-1.0-1.1"] is None
    missing = errors["fw-release-1.1-1.2"] or ""
    assert "fw-3.tar.gz is gone (404)" in missing and "pin a version a suite still has" in missing


def test_oversized_download_is_cut_off(http_root: tuple[Path, str, list[str]], tmp_path: Path) -> None:
    root, url, _ = http_root
    text, _ = serve_release_chain(root)
    cat = catalogue.parse(text)
    deb = root / "pool/main/f/fw/fw_1_all.deb"
    deb.write_bytes(deb.read_bytes() + b"\0" * 100_000)
    fetcher = Fetcher(cat, tmp_path / "cache", mirrors={"debian": url, "pypi": url}, progress=False)
    errors = [o.error for o in fetcher.fetch(cat.select("bench"), tmp_path / "out")]
    assert errors[0] is not None and "pinned" in errors[0]


# ---------------------------------------------------------------- the demo's firmware


def test_demo_fetches_its_chain_from_an_empty_directory(http_root: tuple[Path, str, list[str]], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    root, url, requests = http_root
    text, releases = serve_release_chain(root)
    cat = catalogue.parse(text)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    console = Console(file=io.StringIO(), width=200)
    kwargs = dict(cache=tmp_path / "cache", catalogue=cat, mirrors={"debian": url, "pypi": url}, console=console,
                  repos=[empty])
    firmware = demo_firmware.locate(**kwargs)  # type: ignore[arg-type]
    assert firmware.origin == "fetched" and "fetched into" in firmware.note
    label, chain = demo.releases_of(firmware)
    assert [r.image for r in chain] == releases[:3] and [r.version for r in chain] == ["1.0", "1.1", "1.2"]
    assert list(empty.iterdir()) == []  # nothing lands in the working directory
    requests.clear()
    again = demo_firmware.locate(**kwargs)  # type: ignore[arg-type]
    assert again.origin == "cache" and requests == []


def test_demo_falls_back_to_a_generated_chain(http_root: tuple[Path, str, list[str]], tmp_path: Path) -> None:
    root, url, requests = http_root
    text, _ = serve_release_chain(root)
    cat = catalogue.parse(text)
    console = Console(file=io.StringIO(), width=200)
    offline = demo_firmware.locate(cache=tmp_path / "c1", catalogue=cat, mirrors={"debian": url, "pypi": url},
                                   console=console, offline=True, repos=[])
    assert requests == [], "--offline must not touch the network"
    assert offline.origin == "generated"
    assert "offline: the real firmware would need 3 download(s)" in offline.note
    assert f"{url}/packages/ab/fw-2-py3-none-any.whl" in offline.note
    (root / "packages/ab/fw-2-py3-none-any.whl").write_bytes(b"tampered")
    failed = demo_firmware.locate(cache=tmp_path / "c2", catalogue=cat, mirrors={"debian": url, "pypi": url},
                                  console=console, repos=[])
    assert failed.origin == "generated" and "could not fetch the real firmware (fw-release-1.0-1.1" in failed.note
    label, chain = demo.releases_of(failed)
    assert "not real firmware" in label and len(chain) == 5
    assert chain == demo.releases_of(offline)[1], "the generated chain is deterministic"
    assert len({r.image for r in chain}) == 5 and all(len(r.image) > 40_000 for r in chain)


def test_demo_runs_offline_on_the_generated_chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole demo from an empty directory with no repository, no cache and no network."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    monkeypatch.setattr(demo_firmware, "checkouts", lambda: [empty])  # as from a wheel install
    out = io.StringIO()
    outcomes = demo.run(console=Console(file=out, width=200), offline=True, cache=tmp_path / "cache")
    text = out.getvalue()
    assert "generated release chain (synthetic images, not real firmware)" in text
    assert "offline: the real firmware would need" in text and "files.pythonhosted.org" in text
    assert {o.end for o in outcomes if o.story != "other operator's SIM"} == {"1.4"}
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.tar.gz"))


# ---------------------------------------------------------------- the drawn set


@pytest.fixture(scope="module")
def draw_script() -> ModuleType:
    return load_script(REPO / "firmware_samples" / "draw.py", "fotadelta_draw_under_test")


# Each pair's order as `dpkg --compare-versions` gives it (Debian's reference implementation).
DPKG_ORDER = [("1.0~rc1", "1.0", -1), ("1:1.0", "2.0", 1), ("2.06-13+deb12u1", "2.06-13+deb12u2", -1),
              ("1.9-1", "1.12-1", -1),
              ("3:6.04~git20190206.bf6db5b4+dfsg1-3", "3:6.04~git20190206.bf6db5b4+dfsg1-3.1", -1),
              ("1.0-1", "1.0a-1", -1), ("1.0", "1.0-0", 0), ("0.28-1.1", "0.29a-1.1", -1), ("1.0+b1", "1.0", 1),
              ("1.0~~", "1.0~", -1), ("1.0a", "1.0+", -1), ("1:1.35.0-4+deb12u1+b1", "1:1.37.0-6+b9", -1),
              ("1.4.0-108-gd856466+dfsg1-1.3+deb12u1", "1.4.0-110-ge888634+dfsg1-0.1", -1)]


@pytest.mark.parametrize("a, b, order", DPKG_ORDER)
def test_debian_versions_in_dpkg_order(draw_script: ModuleType, a: str, b: str, order: int) -> None:
    assert draw_script.debian_compare(a, b) == order and draw_script.debian_compare(b, a) == -order


def blob(seed: int, size: int) -> bytes:
    """Binary data (it holds NUL bytes) of size bytes."""
    return random.Random(seed).randbytes(size) + b"\0"


def test_draw_takes_changed_binaries_of_consecutive_versions(draw_script: ModuleType, tmp_path: Path) -> None:
    """The drawn pairs: consecutive versions in order (not in file name order), files both
    hold (under /usr or not, a wheel's .data without its version, a library without its
    auditwheel hash), changed, binary, of the sizes drawn, no documentation, compressed
    stream, picture, compiled Python, image of another set or alias of a file drawn; the same
    for the same seed, and
    entries that the catalogue reads back."""
    kept = {"fw/a.bin": (1, 2), "fw/b.bin": (3, 4), "fw/c.bin": (5, 6)}
    old = {"lib/firmware/moved.bin": blob(7, 9000), **{k: blob(a, 9000) for k, (a, _b) in kept.items()},
           "fw/same.bin": blob(9, 9000), "fw/text.txt": b"x" * 9000, "fw/small.bin": blob(10, 100),
           "usr/share/doc/p/changelog.Debian": blob(11, 9000), "fw/packed.gz": b"\x1f\x8b" + blob(12, 9000),
           "fw/cached.pyc": blob(13, 9000), "fw/known.bin": blob(14, 9000), "fw/only-old.bin": blob(15, 9000)}
    new = {"usr/lib/firmware/moved.bin": blob(8, 9000), **{k: blob(b, 9000) for k, (_a, b) in kept.items()},
           "fw/same.bin": blob(9, 9000), "fw/text.txt": b"y" * 9000, "fw/small.bin": blob(16, 100),
           "usr/share/doc/p/changelog.Debian": blob(17, 9000), "fw/packed.gz": b"\x1f\x8b" + blob(18, 9000),
           "fw/cached.pyc": blob(19, 9000), "fw/known.bin": blob(20, 9000), "fw/only-new.bin": blob(21, 9000)}
    old["fw/z-alias.bin"], new["fw/z-alias.bin"] = old["fw/a.bin"], new["fw/a.bin"]  # the same pair again
    wheel_old = {"w-1.9.data/scripts/tool": blob(22, 9000), "w.libs/libz-0123abcd.so.1": blob(23, 9000)}
    wheel_new = {"w-1.10.data/scripts/tool": blob(24, 9000), "w.libs/libz-89ef4567.so.1": blob(25, 9000)}
    files = {"p_1.10-1_all.deb": deb_bytes(new), "p_1.9-1_all.deb": deb_bytes(old), "p_1.0-1_all.deb": deb_bytes(old),
             "w-1.9-py3-none-any.whl": wheel_bytes(wheel_old), "w-1.10-py3-none-any.whl": wheel_bytes(wheel_new),
             "lone_1-1_all.deb": deb_bytes(old)}
    sources = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        package, version = (name.split("_")[:2] if name.endswith(".deb") else name.split("-")[:2])
        sources.append(f'[sources."{name}"]\narchive = "{"debian" if name.endswith(".deb") else "pypi"}"\n'
                       f'package = "{package}"\nversion = "{version}"\norigin = "o"\npath = "x/{name}"\n'
                       f'size = {len(data)}\nsha256 = "{hashlib.sha256(data).hexdigest()}"\n')
    known = hashlib.sha256(new["fw/known.bin"]).hexdigest()
    bench = (f'[[pairs]]\nname = "k"\nsets = ["bench"]\narch = "a"\nformat = "bin"\nkind = "k"\ndescription = "d"\n'
             f'old = {{ source = "lone_1-1_all.deb", member = "fw/a.bin", size = 9001, sha256 = "{"0" * 64}" }}\n'
             f'new = {{ source = "lone_1-1_all.deb", member = "fw/known.bin", size = 9001, sha256 = "{known}" }}\n')
    cat = catalogue.parse("\n".join(sources) + bench)

    def archive_of(source: catalogue.Source) -> Path:
        return tmp_path / source.id

    drawn = draw_script.draw(cat, archive_of, seed=5, per_build=3)
    assert drawn == draw_script.draw(cat, archive_of, seed=5, per_build=3)
    deb = [d for d in drawn if d.old_source.package == "p"]
    assert {(d.old_source.version, d.new_source.version) for d in deb} == {("1.9-1", "1.10-1")}
    assert len(deb) == 3 and {d.new_member for d in deb} <= {*kept, "usr/lib/firmware/moved.bin"}
    moved = [d for d in deb if d.new_member == "usr/lib/firmware/moved.bin"]
    assert all(d.old_member == "lib/firmware/moved.bin" for d in moved)
    assert all(d.old_member == d.new_member for d in deb if not moved or d is not moved[0])
    wheel = sorted((d.old_member, d.new_member) for d in drawn if d.old_source.package == "w")
    assert wheel == [("w-1.9.data/scripts/tool", "w-1.10.data/scripts/tool"),
                     ("w.libs/libz-0123abcd.so.1", "w.libs/libz-89ef4567.so.1")]
    assert len({d.name for d in drawn}) == len(drawn) == 5
    assert {d.name for d in draw_script.draw(cat, archive_of, seed=6, per_build=1)} <= {d.name for d in drawn}

    block = draw_script.toml_entries(drawn, 5)
    text = "\n".join(sources) + bench
    updated = draw_script.replace_block(text, block)
    assert draw_script.replace_block(updated, block) == updated  # the block is replaced, not appended again
    read = catalogue.parse(updated).select("drawn")
    assert [(p.name, p.old.member, p.new.member, p.new.sha256, p.new.size) for p in read] == [
        (d.name, d.old_member, d.new_member, d.new.sha256, d.new.size) for d in drawn]
    assert {p.category for p in read} == {"undisclosed/bin/drawn"}


def test_drawn_images_are_named_by_their_headers(draw_script: ModuleType) -> None:
    elf = bytearray(64)
    elf[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<HH", elf, 16, 3, 183)
    assert draw_script.category(bytes(elf)) == ("aarch64", "elf")
    struct.pack_into("<HH", elf, 16, 1, 243)
    assert draw_script.category(bytes(elf)) == ("riscv64", "elf-object")
    pe = bytearray(0x100)
    pe[:2] = b"MZ"
    struct.pack_into("<I", pe, 0x3C, 0x80)
    pe[0x80:0x84] = b"PE\0\0"
    struct.pack_into("<H", pe, 0x84, 0x8664)
    assert draw_script.category(bytes(pe)) == ("x86-64", "pe")
    assert draw_script.category(b"MZ" + bytes(10)) == ("undisclosed", "bin")
    assert draw_script.category(bytes(100)) == ("undisclosed", "bin")


def test_shipped_drawn_set(draw_script: ModuleType) -> None:
    """The catalogue's drawn set is the draw's block, apart from the other sets, fetched to
    its own directory."""
    cat = catalogue.load()
    drawn = cat.select("drawn")
    assert len(drawn) >= 60 and all(p.sets == ("drawn",) and p.kind == "drawn" for p in drawn)
    others = {i.sha256 for p in cat.pairs if p.sets != ("drawn",) for i in (p.old, p.new)}
    assert not {i.sha256 for p in drawn for i in (p.old, p.new)} & others
    text = (REPO / "src" / "fotadelta" / "samples" / "catalogue.toml").read_text("utf-8")
    assert text.count(draw_script.BEGIN) == 1 and text.index(draw_script.BEGIN) < text.index(draw_script.END)
    dests = load_script(REPO / "firmware_samples" / "fetch.py", "fotadelta_fetch_under_test").DEFAULT_DEST
    assert dests["drawn"].name == "drawn"
