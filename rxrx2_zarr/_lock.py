"""One converter per destination: a lock object in the store root naming who holds it.

Locally the lock is created with ``O_EXCL`` and is exclusive. On object storage it is a check-then-put: it stops
a second converter started later, but two started within the same instant may both proceed (object stores offer
no portable create-if-absent through fsspec). Sites are whole-object writes either way, so such a race wastes
work but cannot tear a shard.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ._errors import StoreLockedError
from ._storage import StoreIO

__all__ = ["LOCK_KEY", "Lock", "acquire", "read_lock"]

LOCK_KEY = ".rxrx2-zarr.lock"


@dataclass(frozen=True)
class Lock:
    host: str
    pid: int
    since: str
    token: str

    def to_json(self) -> bytes:
        return json.dumps({"host": self.host, "pid": self.pid, "since": self.since, "token": self.token}).encode()

    def describe(self) -> str:
        return f"process {self.pid} on host {self.host!r} since {self.since}"


def _new_lock() -> Lock:
    return Lock(socket.gethostname(), os.getpid(), datetime.now(UTC).isoformat(timespec="seconds"), uuid.uuid4().hex)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_lock(store: StoreIO) -> Lock | None:
    try:
        data: dict[str, Any] = json.loads(store.read(LOCK_KEY))
        return Lock(str(data["host"]), int(data["pid"]), str(data["since"]), str(data.get("token", "")))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return Lock("?", -1, "?", "")  # unreadable lock (torn write): treated as held by an unknown process


def acquire(store: StoreIO, *, take_over_dead: bool, break_lock: bool) -> Lock:
    """Take the destination's lock or raise :class:`StoreLockedError` saying who holds it.

    A lock whose process is dead on this host is taken over when ``take_over_dead`` (``--resume`` or
    ``--overwrite``); any other existing lock only with ``break_lock``.
    """
    mine = _new_lock()
    if store.write_exclusive(LOCK_KEY, mine.to_json()):
        return mine
    held = read_lock(store)
    if held is None:  # released between our attempt and the read
        if store.write_exclusive(LOCK_KEY, mine.to_json()):
            return mine
        held = read_lock(store) or Lock("?", -1, "?", "")
    same_host = held.host == mine.host
    dead = same_host and held.pid > 0 and not _alive(held.pid)
    if break_lock or (dead and take_over_dead):
        store.write(LOCK_KEY, mine.to_json())
        return mine
    where = store.url
    if dead:
        raise StoreLockedError(
            f"{where}: locked by {held.describe()}, which is no longer running; "
            "use --resume to continue its conversion (or --break-lock)"
        )
    if same_host:
        raise StoreLockedError(f"{where}: another converter is writing this store: {held.describe()}")
    raise StoreLockedError(
        f"{where}: locked by {held.describe()}; if that converter is gone, rerun with --break-lock"
    )


def release(store: StoreIO, lock: Lock) -> None:
    """Remove the lock if it is still ours (someone may have broken it)."""
    current = read_lock(store)
    if current is not None and current.token == lock.token:
        store.delete(LOCK_KEY)
