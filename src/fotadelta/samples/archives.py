"""Read named files out of a .deb, a wheel (zip) or an sdist (tar), with every size bounded.

Nothing is ever written under an archive's own member names, so a hostile name cannot
escape anywhere; names are still normalised and refused when absolute or holding '..'.
Decompression is streamed and stops past a total bound, so a small archive cannot expand
without limit; only regular files are read, each at most ``limit`` bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import tarfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, TypeVar, cast

import zstandard

MAX_EXPANDED = 2 << 30  # decompressed bytes read from one archive, at most
AR_MAGIC = b"!<arch>\n"
AR_HEADER = 60
T = TypeVar("T")


class ArchiveError(ValueError):
    """The archive is malformed, too large, or lacks a member."""


def normalise(name: str) -> str:
    """A member name as the catalogue writes it: relative, no './', no '..'."""
    path = PurePosixPath(name)
    parts = [p for p in path.parts if p not in (".", "/")]
    if path.is_absolute() or ".." in parts:
        return ""  # never matches a catalogue member
    return "/".join(parts)


class _Bounded(io.RawIOBase):
    """A read-only view of a stream that fails once more than ``limit`` bytes were read."""

    def __init__(self, inner: BinaryIO, limit: int, what: str) -> None:
        self._inner, self._left, self._what = inner, limit, what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(min(len(buffer), self._left + 1))
        if len(data) > self._left:
            raise ArchiveError(f"{self._what} expands to more than its bound")
        self._left -= len(data)
        buffer[: len(data)] = data
        return len(data)


def _deb_data(path: Path, fh: BinaryIO) -> tuple[str, BinaryIO]:
    """Position ``fh`` on the data.tar.* member of a .deb (an ar archive)."""
    if fh.read(len(AR_MAGIC)) != AR_MAGIC:
        raise ArchiveError(f"{path.name}: not a Debian package (no ar header)")
    total = path.stat().st_size
    while True:
        header = fh.read(AR_HEADER)
        if len(header) < AR_HEADER:
            raise ArchiveError(f"{path.name}: no data.tar member")
        if header[58:60] != b"`\n":
            raise ArchiveError(f"{path.name}: corrupt ar member header")
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise ArchiveError(f"{path.name}: corrupt ar member size") from None
        start = fh.tell()
        if size < 0 or start + size > total:
            raise ArchiveError(f"{path.name}: ar member {name!r} runs past the end of the file")
        if name.startswith("data.tar"):
            return name, cast(BinaryIO, _Slice(fh, size))
        fh.seek(start + size + (size & 1))  # members are 2-byte aligned


class _Slice(io.RawIOBase):
    """``size`` bytes of ``fh`` from its current position."""

    def __init__(self, fh: BinaryIO, size: int) -> None:
        self._fh, self._left = fh, size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._fh.read(min(len(buffer), self._left))
        self._left -= len(data)
        buffer[: len(data)] = data
        return len(data)


def _decompressed(name: str, raw: BinaryIO) -> BinaryIO:
    """The decompressed stream of a tar member of a .deb or of an sdist."""
    buffered = cast(BinaryIO, io.BufferedReader(cast(io.RawIOBase, raw)))
    if name.endswith(".xz"):
        return cast(BinaryIO, lzma.open(buffered))
    if name.endswith(".zst"):
        return cast(BinaryIO, zstandard.ZstdDecompressor().stream_reader(buffered))
    if name.endswith(".gz"):
        return cast(BinaryIO, gzip.GzipFile(fileobj=buffered))
    if name.endswith(".tar"):
        return buffered
    raise ArchiveError(f"unsupported compression of {name}")


def _tar_entries(stream: BinaryIO, what: str) -> Iterator[tuple[str, tarfile.TarInfo, tarfile.TarFile]]:
    """Each entry of a tar stream, read once and its expansion bounded, with its normalised name."""
    bounded = cast(BinaryIO, io.BufferedReader(_Bounded(stream, MAX_EXPANDED, what)))
    with tarfile.open(fileobj=bounded, mode="r|") as tar:
        for info in tar:
            yield normalise(info.name), info, tar


def _tar_data(tar: tarfile.TarFile, info: tarfile.TarInfo, name: str, what: str) -> bytes:
    """A regular entry's bytes; ArchiveError when there are fewer than its header says."""
    member = tar.extractfile(info)
    assert member is not None  # a regular file always has data
    data = member.read(info.size + 1)
    if len(data) != info.size:
        raise ArchiveError(f"{what}: {name} is truncated")
    return data


def _from_tar(stream: BinaryIO, wanted: set[str], limit: int, what: str) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for name, info, tar in _tar_entries(stream, what):
        if name not in wanted:
            continue
        if not info.isreg():
            link = f" (a link to {info.linkname})" if info.issym() or info.islnk() else ""
            raise ArchiveError(f"{what}: {name} is not a regular file{link}")
        if info.size > limit:
            raise ArchiveError(f"{what}: {name} is {info.size:,} bytes, over the {limit:,} byte bound")
        found[name] = _tar_data(tar, info, name, what)
        if len(found) == len(wanted):
            break
    return found


def _from_zip(path: Path, wanted: set[str], limit: int) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                name = normalise(info.filename)
                if name not in wanted or info.is_dir():
                    continue
                if info.file_size > limit:
                    raise ArchiveError(f"{path.name}: {name} is {info.file_size:,} bytes, over the bound")
                with zf.open(info) as member:
                    data = member.read(limit + 1)
                if len(data) > limit:
                    raise ArchiveError(f"{path.name}: {name} expands past its bound")
                found[name] = data
    except zipfile.BadZipFile as exc:
        raise ArchiveError(f"{path.name}: {exc}") from None
    return found


@dataclass(frozen=True)
class Member:
    """A regular file of an archive, as survey() saw it."""

    size: int
    sha256: str
    head: bytes  # its first HEAD bytes


HEAD = 8 << 10


def _survey_tar(stream: BinaryIO, low: int, high: int, what: str) -> dict[str, Member]:
    found: dict[str, Member] = {}
    for name, info, tar in _tar_entries(stream, what):
        if name and info.isreg() and low <= info.size <= high:
            data = _tar_data(tar, info, name, what)
            found[name] = Member(len(data), hashlib.sha256(data).hexdigest(), data[:HEAD])
    return found


def _survey_zip(path: Path, low: int, high: int) -> dict[str, Member]:
    found: dict[str, Member] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                name = normalise(info.filename)
                if not name or info.is_dir() or not low <= info.file_size <= high:
                    continue
                with zf.open(info) as member:
                    data = member.read(high + 1)
                if len(data) != info.file_size:
                    raise ArchiveError(f"{path.name}: {name} is not the size its entry says")
                found[name] = Member(len(data), hashlib.sha256(data).hexdigest(), data[:HEAD])
    except zipfile.BadZipFile as exc:
        raise ArchiveError(f"{path.name}: {exc}") from None
    return found


def survey(path: Path, low: int, high: int) -> dict[str, Member]:
    """Every regular file of the archive at ``path`` (as read_members) of ``low`` to ``high``
    bytes, by normalised name: its size, sha256 and first bytes. Links and other sizes are
    left out; the archive's expansion is bounded as for read_members."""
    return _read(path, lambda: _survey_zip(path, low, high),
                 lambda stream: _survey_tar(stream, low, high, path.name))


def _read(path: Path, from_zip: Callable[[], T], from_tar: Callable[[BinaryIO], T]) -> T:
    """from_zip() for a wheel or zip, else from_tar() of the (decompressed) tar stream of a
    .deb or an sdist; their read and decoding errors as ArchiveError."""
    name = path.name
    try:
        if name.endswith((".whl", ".zip")):
            return from_zip()
        with path.open("rb") as fh:
            inner, raw = _deb_data(path, fh) if name.endswith(".deb") else (name, fh)
            return from_tar(_decompressed(inner, raw))
    except (tarfile.TarError, lzma.LZMAError, zstandard.ZstdError, OSError, EOFError) as exc:
        raise ArchiveError(f"{name}: {type(exc).__name__}: {exc}") from None


def read_members(path: Path, members: Iterable[str], limit: int) -> dict[str, bytes]:
    """The named members of the archive at ``path`` (by its file name: .deb, .whl/.zip,
    .tar.gz/.tar.xz/.tar), each at most ``limit`` bytes. Raises ArchiveError if one is missing."""
    name = path.name
    wanted = {normalise(m) for m in members}
    if "" in wanted:
        raise ArchiveError(f"{name}: a member name must be relative and without '..'")
    found = _read(path, lambda: _from_zip(path, wanted, limit),
                  lambda stream: _from_tar(stream, wanted, limit, name))
    missing = sorted(wanted - found.keys())
    if missing:
        raise ArchiveError(f"{name}: no member {', '.join(missing)}")
    return found
