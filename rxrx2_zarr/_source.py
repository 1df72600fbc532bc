"""What a conversion's source is, and where its images root, metadata and embeddings are.

``SRC`` may be a directory (local, ``s3://``, ``gs://``, an ``https://`` directory listing), a zip archive (a local
``.zip`` path, ``https://host/x.zip``, or any fsspec URL to one, detected as a file), or an explicit fsspec zip URL,
chained or not (``zip::https://host/x.zip``, ``zip://rxrx2::s3://bucket/x.zip``, ``zip://::/path/x.zip``). Inside,
the images root is ``images/`` (at the top, or under one top folder such as ``rxrx2/``) or the experiment folders
themselves. ``metadata`` and ``embeddings`` may be given separately (paths, URLs, zip members, or archives and
directories holding the usual file names); by default they are looked up next to ``images/`` and at the top.

:func:`resolve_source` does this once, in the coordinator, and returns a :class:`Source`: small, frozen and
picklable, carrying only URLs. :meth:`Source.open` gives the :class:`SourceIO` that the planner, the site workers and
``verify`` read through: keys ``images/<experiment>/Plate<p>/...`` (as in RxRx2's tree, whatever the images root
really is) and the metadata and embeddings names. Each worker process opens its own (archives: one read of the
central directory per process).

Sizes: zip members' come from the central directory, local and bucket files' from the listing; HTTP listings have
none, so for HTTP directories the size checks happen on the bytes read (``sizes_known`` is False). Reads from
remote sources are retried (:func:`._fs.fetch`) and fail as :class:`TransferError` naming the URL or member.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import _fs
from ._errors import ImageError, SourceError, TransferError
from ._paths import check_experiment
from ._schema import EMBEDDINGS_NAMES, METADATA_NAMES
from ._storage import StoreIO, check_key
from ._zip import BadMember, ZipArchive

__all__ = ["FileRef", "Source", "SourceIO", "open_archive", "resolve_source"]

IMAGES = "images"
_PLATE = re.compile(r"^Plate[1-9][0-9]*$")
#: How many top-level folders are looked into when deciding whether they are experiment folders.
_PROBE = 8


def _options_json(options: Mapping[str, Any] | None) -> str:
    return json.dumps(dict(options or {}), sort_keys=True, default=str)


@functools.lru_cache(maxsize=16)
def _archive(url: str, options_json: str, pid: int, version: tuple[int, int] | None) -> ZipArchive:
    return ZipArchive(url, json.loads(options_json))


def open_archive(url: str, storage_options: Mapping[str, Any] | None = None) -> ZipArchive:
    """The archive at ``url``, its central directory read once per process (a local archive again when its size or
    modification time changed: a new download in a long-lived process)."""
    version = None
    if os.path.isfile(url):
        stat = os.stat(url)
        version = (stat.st_size, stat.st_mtime_ns)
    return _archive(url, _options_json(storage_options), os.getpid(), version)


@dataclass(frozen=True)
class FileRef:
    """One file: at ``url`` on a filesystem, or the member ``member`` of the zip archive at ``url``."""

    url: str
    member: str | None = None

    def describe(self) -> str:
        return self.url if self.member is None else f"{self.member} in the zip archive {self.url}"


@dataclass(frozen=True)
class Source:
    """A resolved source: only URLs and names (picklable, hashable)."""

    url: str
    """SRC as given."""
    options_json: str
    archive: str | None
    """URL of the zip archive holding the images, or None for a directory tree."""
    images: str
    """The images root: a folder inside ``archive`` (``""``: its top), or a directory URL."""
    metadata_name: str | None
    """How the metadata file is named in messages and the store: relative to SRC, or as given."""
    metadata: FileRef | None
    embeddings_name: str | None
    embeddings: FileRef | None
    description: str
    """Where the images were found, for the report."""
    root: str = ""
    """SRC as a portable URL: the directory, or the archive."""
    images_rel: str = ""
    """The images root relative to SRC (``images``, ``rxrx2/images``, ``""`` for experiment folders at the top)."""

    @property
    def storage_options(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.options_json)
        return loaded

    def open(self) -> SourceIO:
        """The reader of this source, made once per process."""
        return _open(self, os.getpid())

    def locations(self) -> tuple[str, ...]:
        """The URLs of everything the source reads (archives, directories, files): a destination must stay clear."""
        found = [self.root or self.url, self.archive or self.images]
        for ref in (self.metadata, self.embeddings):
            if ref is not None:
                found.append(ref.url)
        return tuple(dict.fromkeys(found))

    def attrs(self) -> dict[str, Any]:
        """For the store's ``source`` attributes: what was found, relative to SRC (or as given), so that the same
        tree converted from elsewhere records the same."""
        return {
            "kind": "zip" if self.archive is not None else "directory",
            "images": self.images_rel,
            "metadata": self.metadata_name,
            "embeddings": self.embeddings_name,
        }


@functools.lru_cache(maxsize=8)
def _open(source: Source, pid: int) -> SourceIO:
    return SourceIO(source)


def _reopen(source: Source) -> SourceIO:
    return source.open()


class SourceIO:
    """Reads of a resolved source by key: ``images/...`` under the images root, or the metadata/embeddings name.

    Its reads (``read``, ``read_range``, ``exists``, ``find``) mirror :class:`StoreIO`'s.
    """

    def __init__(self, source: Source) -> None:
        self.source = source
        self.url = source.url
        self.storage_options = source.storage_options
        self._archive = open_archive(source.archive, self.storage_options) if source.archive else None
        self._images = None if source.archive else StoreIO(source.images, self.storage_options)
        self.http = self._images is not None and _fs.is_http(self._images.fs)
        self.sizes_known = not self.http
        """Whether :meth:`find` gives true sizes (not for HTTP directory listings)."""
        self._files: dict[str, FileRef] = {}
        for name, ref in ((source.metadata_name, source.metadata), (source.embeddings_name, source.embeddings)):
            if name is not None and ref is not None:
                self._files[name] = ref

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (self.source,))

    # --- keys ----------------------------------------------------------------------------------------------------

    def _image(self, key: str) -> str | None:
        """The path below the images root for an ``images/...`` key (None for another key)."""
        if key in self._files or not key.startswith(IMAGES + "/"):
            return None
        return check_key(key[len(IMAGES) + 1 :])

    def _member(self, rel: str) -> str:
        return f"{self.source.images}/{rel}" if self.source.images else rel

    # --- reads ---------------------------------------------------------------------------------------------------

    def read(self, key: str) -> bytes:
        rel = self._image(key)
        if rel is None:
            return self._read_file(key)
        if self._archive is not None:
            return self._read_member(self._archive, self._member(rel), key, image=True)
        return self._read_store(rel)

    def read_range(self, key: str, start: int, end: int) -> bytes:
        rel = self._image(key)
        if rel is None:
            return self._read_file(key)[start:end]
        if self._archive is not None:
            if start != 0:
                return self.read(key)[start:end]
            try:
                return self._archive.read_head(self._member(rel), end)
            except BadMember as exc:
                raise ImageError(str(exc)) from None
        store = self._images
        assert store is not None
        if store.local:
            return store.read_range(rel, start, end)
        return self._remote(rel, lambda: store.read_range(rel, start, end))

    def _read_store(self, rel: str) -> bytes:
        store = self._images
        assert store is not None
        if store.local:
            return store.read(rel)
        return self._remote(rel, lambda: store.read(rel))

    def _remote(self, rel: str, read: Any) -> bytes:
        url = _fs.join_url(self.source.images, rel)
        try:
            data: bytes = _fs.fetch(url, read)
        except FileNotFoundError:
            if self.http:  # it was listed: the server lost it, or fails
                raise TransferError(f"{url}: HTTP 404 Not Found (the file was listed when the conversion started)") from None
            raise
        return data

    def _read_member(self, archive: ZipArchive, member: str, key: str, *, image: bool) -> bytes:
        """A member, re-read (bounded) when a remote copy fails its CRC: a transfer may have damaged it."""
        attempts = 1 if archive.local else _fs.RETRIES + 1
        for attempt in range(attempts):
            try:
                return archive.read(member)
            except BadMember as exc:
                if attempt + 1 < attempts:
                    continue
                if image:
                    raise ImageError(str(exc)) from None
                raise SourceError(str(exc)) from None
        raise AssertionError("unreachable")

    def _read_file(self, key: str) -> bytes:
        ref = self._files.get(key)
        if ref is None:
            raise FileNotFoundError(f"{key}: not part of the source {self.url}")
        return read_ref(ref, self.storage_options, key)

    def exists(self, key: str) -> bool:
        rel = self._image(key)
        if rel is None:
            return key in self._files
        if self._archive is not None:
            return self._member(rel) in self._archive.members
        assert self._images is not None
        return self._images.exists(rel)

    def find(self, prefix: str = IMAGES, detail: bool = False) -> dict[str, int]:
        """``{images/<path>: size}`` of every file under the images root (only ``images`` is a valid prefix)."""
        if prefix.strip("/") != IMAGES:
            raise ValueError(f"a source lists its images only, not {prefix!r}")
        if self._archive is not None:
            base = self.source.images
            strip = len(base) + 1 if base else 0
            for name in self._archive.explicit_directories:
                if name.lower().endswith(".png") and (not base or name.startswith(base + "/")):
                    raise SourceError(f"{name}/: a directory in the zip archive {self._archive.url}, where an image was expected")
            return {
                f"{IMAGES}/{name[strip:]}": member.size
                for name, member in self._archive.members.items()
                if not base or name.startswith(base + "/")
            }
        assert self._images is not None
        listing = self._images.find(detail=detail and self.sizes_known)
        return {f"{IMAGES}/{key}": size for key, size in listing.items()}

    def find_typed(self, prefix: str = IMAGES) -> dict[str, tuple[int, str | None]]:
        """Like :meth:`find` with sizes, plus what a local entry is when it is not a regular file (a FIFO, a device:
        see :meth:`StoreIO.find_typed`); archive members are always plain files."""
        if self._archive is not None or not self.sizes_known:
            return {key: (size, None) for key, size in self.find(prefix, detail=True).items()}
        if prefix.strip("/") != IMAGES:
            raise ValueError(f"a source lists its images only, not {prefix!r}")
        assert self._images is not None
        return {f"{IMAGES}/{key}": value for key, value in self._images.find_typed().items()}


def read_ref(ref: FileRef, storage_options: Mapping[str, Any] | None, name: str) -> bytes:
    """The bytes of a metadata or embeddings file; ``name`` is how errors call it."""
    if ref.member is not None:
        archive = open_archive(ref.url, storage_options)
        try:
            return archive.read(ref.member)
        except FileNotFoundError:
            raise SourceError(f"{name}: not found ({ref.describe()})") from None
        except BadMember as exc:
            raise SourceError(f"{name}: {exc}") from None
    fs, path = _fs.resolve(ref.url, storage_options)
    try:
        # read_regular: locally, a FIFO or device in the file's place is refused by name, never opened
        return _fs.fetch(ref.url, lambda: _fs.read_regular(fs, path, name))
    except (FileNotFoundError, IsADirectoryError):
        raise SourceError(f"{name}: not found ({ref.url})") from None


# --- resolution ----------------------------------------------------------------------------------------------


class _Place:
    """A folder to look into: inside an archive, or on a filesystem."""

    def __init__(self, archive: ZipArchive | None, url: str, fs: Any = None, path: str = "") -> None:
        self.archive = archive
        self.url = url
        self.fs = fs
        self.path = path

    def sub(self, rel: str, name: str) -> str:
        return f"{rel}/{name}" if rel else name

    def is_dir(self, rel: str) -> bool:
        if self.archive is not None:
            return self._in_archive(rel) in self.archive.directories
        return bool(self.fs.isdir(_fs.join(self.path, rel)))

    def is_file(self, rel: str) -> bool:
        if self.archive is not None:
            return self._in_archive(rel) in self.archive.members
        target = _fs.join(self.path, rel)
        if _fs.is_http(self.fs):
            return bool(self.fs.exists(target))
        if _fs.is_local(self.fs) and os.path.lexists(target) and not os.path.isdir(target):
            # a FIFO, device or socket in a file's place counts as present, so that reading it refuses it by name
            # ("not a regular file") instead of reporting the file as missing
            return True
        return bool(self.fs.isfile(target))

    def _in_archive(self, rel: str) -> str:
        base = self.path
        return f"{base}/{rel}".strip("/") if base else rel

    def folders(self, rel: str) -> list[str]:
        """Names of the folders directly in ``rel``, sorted."""
        if self.archive is not None:
            prefix = self._in_archive(rel)
            start = len(prefix) + 1 if prefix else 0
            return sorted(
                d[start:] for d in self.archive.directories
                if d and (not prefix or d.startswith(prefix + "/")) and "/" not in d[start:]
            )
        try:
            entries = self.fs.ls(_fs.join(self.path, rel), detail=True)
        except FileNotFoundError:
            return []
        return sorted(
            str(e["name"]).rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory"
        )

    def url_of(self, rel: str) -> str:
        return _fs.join_url(self.url, rel) if self.archive is None else self.url

    def ref(self, rel: str) -> FileRef:
        if self.archive is not None:
            return FileRef(self.archive.url, self._in_archive(rel))
        return FileRef(_fs.join_url(self.url, rel))

    def where(self, rel: str) -> str:
        if self.archive is not None:
            inside = self._in_archive(rel)
            return f"{inside + '/' if inside else 'the top'} of the zip archive {self.archive.url}"
        return _fs.join_url(self.url, rel) if rel else self.url


def _looks_like_experiment(place: _Place, rel: str, name: str) -> bool:
    try:
        check_experiment(name)
    except ValueError:
        return False
    return any(_PLATE.match(f) for f in place.folders(place.sub(rel, name)))


def _images_root(place: _Place, rel: str = "", depth: int = 0) -> str:
    """``images``, ``<top>/images``, or the folder holding the experiment folders (relative to the place)."""
    candidate = place.sub(rel, IMAGES)
    if place.is_dir(candidate):
        return candidate
    folders = place.folders(rel)
    if any(_looks_like_experiment(place, rel, f) for f in folders[:_PROBE]):
        return rel
    if depth < 2 and len(folders) == 1:
        return _images_root(place, place.sub(rel, folders[0]), depth + 1)
    shown = ", ".join(folders[:10]) or "no folders"
    raise SourceError(
        f"{place.where(rel)}: no images/ folder, nor experiment folders (<experiment>/Plate<n>/), found here "
        f"(it holds {shown}); expected images/<experiment>/Plate<plate>/<well>_s<site>_w<channel>.png"
    )


def _is_zip_name(path: str) -> bool:
    return path.lower().rstrip("/").endswith(".zip")


def _place(url: str, options: Mapping[str, Any]) -> _Place:
    """Where ``url`` points: into a zip archive, or a folder on a filesystem."""
    split = _fs.split_zip_url(url)
    if split is not None:
        inner, target = split
        archive = open_archive(_fs.portable_url(target), options)
        if inner and inner not in archive.directories:
            raise SourceError(f"{url}: no folder {inner!r} in the zip archive {archive.url}")
        return _Place(archive, archive.url, path=inner)
    portable = _fs.portable_url(url)
    fs, path = _fs.resolve(portable, options)
    if _fs.is_http(fs):
        if _is_zip_name(path):
            return _Place(open_archive(portable, options), portable)
        if not fs.isdir(path):
            raise SourceError(f"{url}: not an HTTP directory listing (nor a .zip URL)")
        return _Place(None, portable, fs, path)
    if fs.isfile(path):
        return _Place(open_archive(portable, options), portable)
    if not fs.isdir(path):
        raise SourceError(f"{url}: source directory does not exist")
    return _Place(None, portable, fs, path)


def _lookup(place: _Place, folders: Sequence[str], names: Sequence[str]) -> str | None:
    for folder in dict.fromkeys(folders):
        for name in names:
            rel = place.sub(folder, name)
            if place.is_file(rel):
                return rel
    return None


def _given_file(text: str, options: Mapping[str, Any], names: Sequence[str], what: str) -> FileRef:
    """``--metadata`` / ``--embeddings``: a file, a zip member, or a folder or archive holding one of ``names``."""
    split = _fs.split_zip_url(text)
    if split is not None:
        inner, target = split
        archive = open_archive(_fs.portable_url(target), options)
        if inner in archive.members:
            return FileRef(archive.url, inner)
        place = _Place(archive, archive.url, path=inner if inner in archive.directories else "")
        if inner and inner not in archive.directories:
            raise SourceError(f"{text}: no member or folder {inner!r} in the zip archive {archive.url}")
        return _search(place, names, text, what)
    portable = _fs.portable_url(text)
    fs, path = _fs.resolve(portable, options)
    if _is_zip_name(path) and not (_fs.is_http(fs) and text.endswith("/")):
        if not _fs.is_http(fs) and not fs.isfile(path):
            raise SourceError(f"{text}: {what} archive not found")
        return _search(_Place(open_archive(portable, options), portable), names, text, what)
    if _fs.is_http(fs):
        if text.endswith("/"):
            return _search(_Place(None, portable, fs, path), names, text, what)
        return FileRef(portable)
    if fs.isdir(path):
        return _search(_Place(None, portable, fs, path), names, text, what)
    if not fs.isfile(path):
        raise SourceError(f"{text}: {what} file not found")
    return FileRef(portable)


def _search(place: _Place, names: Sequence[str], text: str, what: str) -> FileRef:
    """One of ``names`` at the top of ``place``, else in its one top folder, else (archives) anywhere, shallowest."""
    rel = _lookup(place, [""], names)
    if rel is None:
        folders = place.folders("")
        if len(folders) == 1:
            rel = _lookup(place, [folders[0]], names)
    if rel is None and place.archive is not None:
        prefix = place._in_archive("")
        found = sorted(
            (m.count("/"), m) for m in place.archive.members
            if m.rsplit("/", 1)[-1] in names and (not prefix or m.startswith(prefix + "/"))
        )
        if found:
            return FileRef(place.archive.url, found[0][1])
    if rel is None:
        raise SourceError(f"{text}: no {' or '.join(names)} found in {place.where('')} ({what})")
    return place.ref(rel)


def _find_file(
    place: _Place, folders: Sequence[str], given: str | None, options: Mapping[str, Any], names: Sequence[str], what: str
) -> tuple[FileRef | None, str | None]:
    """The metadata or embeddings file and how it is named: as given (``--metadata``), else the first of ``names``
    in ``folders`` of the source (None when there is none)."""
    if given is not None:
        return _given_file(given, options, names, what), given
    found = _lookup(place, folders, names)
    return (None, None) if found is None else (place.ref(found), found)


def resolve_source(
    src: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    metadata: str | None = None,
    embeddings: str | None = None,
    need_metadata: bool = True,
    need_images: bool = True,
) -> Source:
    """Find the images root, the metadata and the embeddings of ``src`` (see the module's documentation).

    Raises :class:`SourceError` naming what is missing where; a missing embeddings file is not an error (the
    store then has none), unless ``embeddings`` was given. ``need_images=False`` (``--no-pixels``): a source
    without images is fine, its images root is then taken to be ``images/``.
    """
    options = dict(storage_options or {})
    place = _place(str(src), options)
    try:
        images = _images_root(place)
    except SourceError:
        if need_images:
            raise
        images = IMAGES
    parent = images.rsplit("/", 1)[0] if images.endswith(IMAGES) and "/" in images else ""
    folders = [parent, ""] if images.endswith(IMAGES) else [images, parent, ""]

    metadata_ref, metadata_name = _find_file(place, folders, metadata, options, METADATA_NAMES, "metadata")
    if metadata_ref is None and need_metadata:
        raise SourceError(
            f"{src}: no {' or '.join(METADATA_NAMES)} found in {place.where(parent)} (expected RxRx2's metadata "
            "file; give it with --metadata PATH_OR_URL if it is published separately)"
        )
    embeddings_ref, embeddings_name = _find_file(place, folders, embeddings, options, EMBEDDINGS_NAMES, "embeddings")

    if place.archive is not None:
        archive_url: str | None = place.archive.url
        images_at = place._in_archive(images)
        description = f"images under {images_at + '/' if images_at else 'the top'} of the zip archive {archive_url}"
        images_value = images_at
    else:
        archive_url = None
        images_value = place.url_of(images)
        description = f"images under {images_value}"
    return Source(
        url=str(src),
        options_json=_options_json(options),
        archive=archive_url,
        images=images_value,
        metadata_name=metadata_name,
        metadata=metadata_ref,
        embeddings_name=embeddings_name,
        embeddings=embeddings_ref,
        description=description,
        root=place.url,
        images_rel=images,
    )
