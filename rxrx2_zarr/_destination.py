"""The converter's destination: every check before the first write, and what ``--overwrite``/``--resume`` find.

All refusals happen before anything is written, so that a refused run leaves the destination untouched (not even a
lock): not overlapping the source, not a file, reachable by worker processes when they write, and either absent or
empty, or ``--overwrite`` of an rxrx2-zarr store, or ``--resume`` of one made with the same fingerprint (source
metadata, output-affecting options, subset). ``--overwrite`` then empties the store; ``--resume`` lists it once,
removes the temporary objects of torn writes and finds the complete sites from that listing and their markers.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from . import _fs, _lock
from ._attrs import Fingerprint, SiteAttributes, SiteChecksums, rxrx2_root
from ._errors import StoreExistsError, StoreFormatError
from ._layout import LEVEL, THUMBNAIL_LEVEL
from ._plan import ConversionPlan
from ._storage import StoreIO

__all__ = [
    "check_reachable",
    "check_separate",
    "clear_for_overwrite",
    "completed_sites",
    "is_array_document",
    "prepare_destination",
    "remove_partials",
]


def check_separate(src_url: str, src_options: Mapping[str, Any], dst: StoreIO) -> None:
    """Refuse a destination inside the source tree or containing it: the source is never modified, and
    ``--overwrite`` must never delete it."""
    src = StoreIO(src_url, src_options)
    a: PurePosixPath | Path
    b: PurePosixPath | Path
    if src.local and dst.local:
        a, b = Path(os.path.realpath(src.root)), Path(os.path.realpath(dst.root))
    elif src.fs.protocol == dst.fs.protocol:
        a, b = PurePosixPath(src.root), PurePosixPath(dst.root)
    else:
        return
    if a == b or b.is_relative_to(a) or a.is_relative_to(b):
        raise StoreExistsError(
            f"{dst.url}: the destination overlaps the source tree {src_url}; the source is never modified: "
            "choose a destination outside it"
        )


def check_reachable(locations: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
    """Worker processes open the source and the destination themselves: refuse what only this process sees (an
    in-memory filesystem)."""
    for url, options in locations:
        if _fs.is_process_local(_fs.resolve(url, options)[0]):
            raise ValueError(
                f"{url}: visible to this process only, so worker processes cannot use it; convert with threads "
                "(no --processes or --scheduler)"
            )


def _read_root(dst: StoreIO) -> dict[str, Any] | None:
    """The raw root attributes of an existing store of ours (any layout), or None when it has no root document."""
    try:
        document = json.loads(dst.read("zarr.json"))
    except FileNotFoundError:
        return None
    except ValueError:
        raise StoreFormatError(f"{dst.url}: zarr.json is not valid JSON") from None
    return rxrx2_root(document, dst.url)


# What a converter killed before its root document can leave at the root: its lock, and the temporary objects of
# the lock and of the root document (StoreIO.write and _lock name them <name>.<32 hex digits>[.stale].partial).
_OWN_ROOT_ENTRY = re.compile(
    rf"^(?:{re.escape(_lock.LOCK_KEY)}|(?:{re.escape(_lock.LOCK_KEY)}|zarr\.json)\.[0-9a-f]{{32}}(?:\.stale)?"
    rf"{re.escape(_lock.PARTIAL_SUFFIX)})$"
)


def _foreign_entries(dst: StoreIO) -> list[str]:
    """Entries of a destination without a root document that are not what an interrupted converter leaves there
    (so a directory of the user's own ``*.partial`` files, or any subdirectory, is never taken for a store)."""
    names = sorted(str(p).rstrip("/").rsplit("/", 1)[-1] for p in dst.fs.ls(dst.root, detail=False))
    return [n for n in names if not _OWN_ROOT_ENTRY.match(n) or dst.fs.isdir(_fs.join(dst.root, n))]


def prepare_destination(dst: StoreIO, *, resume: bool, overwrite: bool, fingerprint: Fingerprint) -> bool:
    """Check the destination before writing anything. Returns True when resuming an existing store."""
    if dst.is_empty_or_missing():
        return False
    verb = "resume into" if resume else "replace"
    if not resume and not overwrite:
        raise StoreExistsError(f"{dst.url}: destination exists; pass --overwrite to replace it or --resume to continue it")
    try:
        attrs = _read_root(dst)
    except StoreFormatError as exc:
        raise StoreExistsError(f"{exc}; refusing to {verb} it") from None
    if attrs is None:
        # No root document: either a converter killed before writing it (the root is the first object written
        # after the lock and the last one removed by --overwrite, so only its lock and temporary objects are
        # there) or something that is not ours.
        foreign = _foreign_entries(dst)
        if foreign:
            raise StoreExistsError(
                f"{dst.url}: exists but is not an rxrx2-zarr store (no zarr.json, and it holds "
                f"{', '.join(repr(n) for n in foreign[:5])}{' ...' if len(foreign) > 5 else ''}, which this package "
                f"did not write); refusing to {verb} it"
            )
        return False
    if overwrite:
        return False
    previous = _flatten(attrs.get("fingerprint"))
    current = _flatten(fingerprint.to_json())
    if previous != current:
        differences = "; ".join(
            f"{key}: store {previous.get(key, '(none)')!r}, now {current.get(key, '(none)')!r}"
            for key in sorted(set(previous) | set(current))
            if previous.get(key) != current.get(key)
        )
        raise StoreExistsError(
            f"{dst.url}: was made from a different source or with different options; cannot resume ({differences}). "
            "Use --overwrite to replace it."
        )
    return True


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"options": {"profile": "x"}}`` -> ``{"options.profile": "x"}`` (to name what differs on resume)."""
    if not isinstance(value, dict):
        return {prefix or "fingerprint": value}
    out: dict[str, Any] = {}
    for key, item in value.items():
        out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return out


def completed_sites(dst: StoreIO, plan: ConversionPlan, listing: Mapping[str, int]) -> dict[int, SiteChecksums]:
    """Positions (and checksums) of the sites whose completion marker is present and intact.

    ``listing`` is the store's one listing: a marker counts only if its shard is listed too, so this costs the
    listing plus one read per marker (concurrent on object stores), nothing per site beyond that.
    """
    candidates = [
        item
        for item in plan.items
        if f"{item.group}/zarr.json" in listing and item.shard in listing and item.thumbnail in listing
    ]
    if not candidates:
        return {}
    keys = [f"{item.group}/zarr.json" for item in candidates]
    documents = dst.read_many(keys)
    done: dict[int, SiteChecksums] = {}
    for item, document in zip(candidates, (documents[k] for k in keys), strict=True):
        if document is None:
            continue
        try:
            attrs = SiteAttributes.parse(json.loads(document)["attributes"]["rxrx2"], item.group)
        except (ValueError, KeyError, TypeError):
            continue  # a foreign or damaged document (StoreFormatError is a ValueError): the site is redone
        if attrs.checksums is not None and attrs.site_id == item.site_id:
            done[item.position] = attrs.checksums
    return done


def remove_partials(dst: StoreIO, listing: Mapping[str, int]) -> int:
    """Delete the temporary objects of writes a killed converter did not finish (never read by anyone)."""
    partials = [key for key in listing if key.endswith(_lock.PARTIAL_SUFFIX)]
    for key in partials:
        dst.delete(key)
    return len(partials)


def clear_for_overwrite(store: StoreIO) -> None:
    """Empty the store except its lock. The root document goes last, so that a run killed halfway still leaves a
    store that is recognisably ours (and may be overwritten or resumed with its old options)."""
    root_doc = store.path("zarr.json")
    lock = store.path(_lock.LOCK_KEY)
    for entry in store.fs.ls(store.root, detail=False):
        path = str(entry).rstrip("/")
        if path in (root_doc, lock):
            continue
        store.fs.rm(path, recursive=True)
    store.delete("zarr.json")


def is_array_document(key: str) -> bool:
    """A site's level array documents (``.../<site>/0/zarr.json``, ``.../<site>/1/zarr.json``)."""
    parts = key.split("/")
    return len(parts) == 7 and parts[-2] in (LEVEL, THUMBNAIL_LEVEL) and parts[-1] == "zarr.json"
