"""Zip archives read in place, by byte ranges: on disk, over HTTP(S), in a bucket.

RxRx2 is published as one images zip of about 185 GB. Opening it reads the end of the file and the central
directory (one or two range requests; about 70 MB for the release's 791,718 members), and nothing else. Each
member is then read with one range request covering its local header and its data (the header's length is known
up to its extra field, so the request asks for a little more), decompressed (stored or deflated) and checked
against the central directory's size and CRC-32. Nothing is ever downloaded whole.

fsspec's own ``zip::`` filesystem is not used for the members: it reads through a file object whose read-ahead
(5 MB blocks by default) would fetch far more than a member over HTTP, and with several requests per member.

An archive object is read-only once open, so threads share it. Worker processes each open the archive
themselves (the object is rebuilt from its URL and options when unpickled).
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from . import _fs
from ._errors import SourceError, TransferError

__all__ = ["BadMember", "Member", "ZipArchive"]

_EOCD = struct.Struct("<4s4H2IH")
_EOCD_SIG = b"PK\x05\x06"
_LOCATOR = struct.Struct("<4sIQI")
_LOCATOR_SIG = b"PK\x06\x07"
_EOCD64 = struct.Struct("<4sQ2H2I4Q")
_EOCD64_SIG = b"PK\x06\x06"
_CENTRAL = struct.Struct("<4s6H3I5HII")
_CENTRAL_SIG = b"PK\x01\x02"
_LOCAL = struct.Struct("<4s5H3I2H")
_LOCAL_SIG = b"PK\x03\x04"
_ZIP64_EXTRA = 0x0001
#: The end-of-central-directory record is 22 bytes plus a comment of up to 65,535: look in a small tail first.
_TAIL_FIRST = 4096
_TAIL_MAX = _EOCD.size + 0xFFFF + _LOCATOR.size
#: Extra bytes asked for beyond a member's data, for a local extra field longer than the central one.
_LOCAL_SLACK = 64
STORED, DEFLATED = 0, 8


class BadMember(ValueError):
    """A member's bytes are not what the central directory says (CRC, size, header, decompression)."""


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    offset: int
    """Offset of the member's local file header in the archive."""
    compressed: int
    size: int
    crc: int
    method: int
    flags: int
    extra: int
    """Length of the central directory's extra field (a guess at the local one's)."""
    name_bytes: int


class ZipArchive:
    """The central directory of a zip archive at ``url`` (any fsspec URL or path), and ranged member reads."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.url = str(url)
        self.storage_options = dict(storage_options or {})
        self.fs, self.path = _fs.resolve(self.url, self.storage_options)
        self.local = _fs.is_local(self.fs)
        self._fd: tuple[int, int] | None = None  # (pid, descriptor): a forked child opens its own
        self.size = self._archive_size()
        self.members: dict[str, Member] = {}
        self.directories: set[str] = {""}
        self.explicit_directories: set[str] = set()
        self.central_directory_bytes = 0
        self._read_central_directory()

    def __reduce__(self) -> tuple[Any, ...]:
        return (ZipArchive, (self.url, self.storage_options))

    def __del__(self) -> None:
        if self._fd is not None and self._fd[0] == os.getpid():
            os.close(self._fd[1])

    # --- raw ranges ------------------------------------------------------------------------------------------------

    def _archive_size(self) -> int:
        try:
            info = self.fs.info(self.path)
            size = info.get("size")
        except FileNotFoundError:
            raise SourceError(f"{self.url}: zip archive not found" + self._http_hint(404)) from None
        except _fs.transient_errors() as exc:
            raise TransferError(f"{self.url}: cannot get the archive's size: {_fs.describe_error(exc)}") from None
        if info.get("partial") is False:  # fsspec's HTTP: the server answered "Accept-Ranges: none"
            raise SourceError(f"{self.url}: the server does not serve byte ranges (Accept-Ranges: none); a zip is "
                              "read in place by ranges: download it, or serve it from a server that does")
        if size is None:
            raise SourceError(
                f"{self.url}: the server does not tell the archive's size (no Content-Length), which reading a zip "
                "in place needs"
            )
        return int(size)

    def _http_hint(self, status: int) -> str:
        return f" (HTTP {status})" if _fs.is_http(self.fs) else ""

    def _pread(self, start: int, end: int) -> bytes:
        if self._fd is None or self._fd[0] != os.getpid():
            self._fd = (os.getpid(), os.open(self.path, os.O_RDONLY))
        return os.pread(self._fd[1], end - start, start)

    def read_range(self, start: int, end: int, what: str | None = None) -> bytes:
        """Bytes ``[start, end)`` of the archive (clipped to its size), retried on transient failures."""
        end = min(end, self.size)
        if end <= start:
            return b""
        label = what or f"{self.url} (bytes {start}-{end - 1})"
        if self.local:
            reader = lambda: self._pread(start, end)  # noqa: E731
        else:
            reader = lambda: bytes(self.fs.cat_file(self.path, start=start, end=end))  # noqa: E731
        try:
            return _fs.fetch(label, reader, expected=end - start)
        except FileNotFoundError:
            # the central directory was read, so the archive existed: it is gone or the server failed
            raise TransferError(f"{label}: the archive is no longer there" + self._http_hint(404)) from None

    # --- central directory -------------------------------------------------------------------------------------

    def _read_central_directory(self) -> None:
        if self.size < _EOCD.size:
            raise SourceError(f"{self.url}: not a zip archive ({self.size} bytes, too short)")
        tail_start = max(0, self.size - _TAIL_FIRST)
        tail = self.read_range(tail_start, self.size)
        at = tail.rfind(_EOCD_SIG)
        if at < 0 and tail_start > 0:
            tail_start = max(0, self.size - _TAIL_MAX)
            tail = self.read_range(tail_start, self.size)
            at = tail.rfind(_EOCD_SIG)
        if at < 0 or len(tail) - at < _EOCD.size:
            raise SourceError(
                f"{self.url}: not a zip archive, or its central directory is missing (no end-of-central-directory "
                "record at its end: a truncated or incomplete download?)"
            )
        _, _, _, _, count, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, at)
        locator_at = at - _LOCATOR.size
        if locator_at >= 0 and tail[locator_at : locator_at + 4] == _LOCATOR_SIG:
            _, _, eocd64_offset, _ = _LOCATOR.unpack_from(tail, locator_at)
            record = self._bytes_at(eocd64_offset, _EOCD64.size, tail, tail_start)
            if record[:4] != _EOCD64_SIG:
                raise SourceError(f"{self.url}: corrupt zip64 end-of-central-directory record")
            _, _, _, _, _, _, _, count, cd_size, cd_offset = _EOCD64.unpack(record)
        if cd_offset + cd_size > self.size:
            raise SourceError(
                f"{self.url}: the central directory ({cd_size} bytes at {cd_offset}) lies beyond the archive's end "
                f"({self.size} bytes): truncated?"
            )
        directory = self._bytes_at(cd_offset, cd_size, tail, tail_start)
        self.central_directory_bytes = cd_size
        for member in self._parse(directory, count):
            if member.name.endswith("/"):
                self.explicit_directories.add(member.name.rstrip("/"))
                self._add_parents(member.name.rstrip("/") + "/x")
                continue
            self.members[member.name] = member
            self._add_parents(member.name)

    def _bytes_at(self, offset: int, length: int, tail: bytes, tail_start: int) -> bytes:
        if offset >= tail_start and offset + length <= tail_start + len(tail):
            return tail[offset - tail_start : offset - tail_start + length]
        return self.read_range(offset, offset + length, f"{self.url} (central directory)")

    def _add_parents(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.directories.add("/".join(parts[:i]))

    def _parse(self, data: bytes, count: int) -> Iterator[Member]:
        pos = 0
        for _ in range(count):
            if data[pos : pos + 4] != _CENTRAL_SIG:
                raise SourceError(f"{self.url}: corrupt central directory (bad entry signature at byte {pos})")
            (_, _, _, flags, method, _, _, crc, compressed, size, name_len, extra_len, comment_len, _, _, _,
             offset) = _CENTRAL.unpack_from(data, pos)
            pos += _CENTRAL.size
            raw_name = data[pos : pos + name_len]
            name = raw_name.decode("utf-8" if flags & 0x800 else "cp437")
            extra = data[pos + name_len : pos + name_len + extra_len]
            pos += name_len + extra_len + comment_len
            if 0xFFFFFFFF in (size, compressed, offset):
                size, compressed, offset = self._zip64(name, extra, size, compressed, offset)
            yield Member(name.lstrip("/"), offset, compressed, size, crc, method, flags, extra_len, name_len)

    def _zip64(self, name: str, extra: bytes, size: int, compressed: int, offset: int) -> tuple[int, int, int]:
        pos = 0
        while pos + 4 <= len(extra):
            kind, length = struct.unpack_from("<2H", extra, pos)
            if kind == _ZIP64_EXTRA:
                values = iter(struct.unpack_from(f"<{length // 8}Q", extra, pos + 4))
                if size == 0xFFFFFFFF:
                    size = next(values)
                if compressed == 0xFFFFFFFF:
                    compressed = next(values)
                if offset == 0xFFFFFFFF:
                    offset = next(values)
                return size, compressed, offset
            pos += 4 + length
        raise SourceError(f"{self.url}: member {name!r}: zip64 sizes announced but no zip64 extra field")

    # --- members -------------------------------------------------------------------------------------------------

    def member(self, name: str) -> Member:
        found = self.members.get(name)
        if found is None:
            if name in self.directories:
                raise IsADirectoryError(f"{name}: a directory in the zip archive {self.url}, not a file")
            raise FileNotFoundError(f"{name}: no such member in the zip archive {self.url}")
        return found

    def describe(self, name: str) -> str:
        return f"{self.url}: member {name}"

    def read(self, name: str) -> bytes:
        """The whole (uncompressed) member, checked against its size and CRC-32 (:class:`BadMember` if not)."""
        member = self.member(name)
        data = self._member_data(member, member.compressed)
        out = self._decompress(member, data, None)
        if len(out) != member.size:
            raise BadMember(f"{self.describe(name)}: {len(out)} bytes after decompression, the central directory says {member.size}")
        if zlib.crc32(out) != member.crc:
            raise BadMember(f"{self.describe(name)}: corrupt (CRC-32 mismatch)")
        return out

    def read_head(self, name: str, nbytes: int) -> bytes:
        """The first ``nbytes`` of a member (not CRC-checked: the member is not read whole)."""
        member = self.member(name)
        want = min(member.compressed, nbytes if member.method == STORED else max(4 * nbytes, 1024))
        out = self._decompress(member, self._member_data(member, want), nbytes)
        if len(out) < min(nbytes, member.size) and want < member.compressed:
            return self.read(name)[:nbytes]
        return out[:nbytes]

    def _member_data(self, member: Member, length: int) -> bytes:
        """The first ``length`` compressed bytes of ``member``: one ranged read, two if the local extra field is
        longer than the central directory's."""
        what = self.describe(member.name)
        if member.flags & 0x1:
            raise BadMember(f"{what}: encrypted members are not supported")
        guess = _LOCAL.size + member.name_bytes + member.extra + _LOCAL_SLACK
        head = self.read_range(member.offset, member.offset + guess + length, what)
        if len(head) < _LOCAL.size or head[:4] != _LOCAL_SIG:
            raise BadMember(f"{what}: no local file header at offset {member.offset} (corrupt archive)")
        name_len, extra_len = _LOCAL.unpack_from(head)[-2:]
        start = _LOCAL.size + name_len + extra_len
        if start + length > len(head):
            rest = self.read_range(member.offset + len(head), member.offset + start + length, what)
            head += rest
        data = head[start : start + length]
        if len(data) != length:
            raise BadMember(f"{what}: member data runs past the end of the archive (truncated)")
        return data

    def _decompress(self, member: Member, data: bytes, limit: int | None) -> bytes:
        if member.method == STORED:
            return data
        if member.method == DEFLATED:
            try:
                inflater = zlib.decompressobj(-15)
                if limit is None:
                    return inflater.decompress(data) + inflater.flush()
                return inflater.decompress(data, limit)
            except zlib.error as exc:
                raise BadMember(f"{self.describe(member.name)}: corrupt (cannot inflate: {exc})") from None
        raise BadMember(
            f"{self.describe(member.name)}: compression method {member.method} is not supported (stored and deflate are)"
        )
