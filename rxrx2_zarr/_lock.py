"""One converter per destination: a lock object in the store root naming who holds it (host, pid, since).

What the lock guarantees:

* **Local filesystem.** Exclusive. The lock is created atomically and complete (written to a temporary file, then
  hard-linked to its name, which fails if the name exists), so a converter killed at any moment leaves either no
  lock or a readable one, never an empty file. Taking over a stale lock renames it away first (atomic: of two
  converters taking over the same lock, only one gets it) and checks that what it renamed was the lock it judged
  stale. A lock is stale when its host is this host and its process is gone (not running, or its PID now belongs
  to a process started after the lock was written); ``--resume`` and ``--overwrite`` take such locks over. A lock
  from another host cannot be checked from here and is only taken with ``--break-lock``; ``--break-lock`` still
  refuses a lock whose process is running on this host.
* **Object storage (S3, GCS, ...) through fsspec.** Creating the lock is a conditional PUT (``If-None-Match: *``,
  see ``StoreIO.write_exclusive``): exclusive on stores that honour it (AWS S3, MinIO, Cloudflare R2), a
  check-then-put elsewhere, where two converters started within the same instant (one round trip) may both
  believe they hold it. Taking over a stale lock (``--resume`` of a dead process on this host, ``--break-lock``)
  re-reads it, deletes it and creates the new one conditionally: object stores offer no portable conditional
  delete, so two converters taking over the same stale lock at the same instant may, rarely, both proceed. A
  converter started later is always refused as above. Racing converters write whole objects only (no object is
  ever torn), but if they were started with different options their objects could mix; the root records one set
  of options. On object storage the lock is therefore a guard against mistakes, not a mutual exclusion protocol:
  never start two converters on one store on purpose.

Everywhere, a converter checks that it still holds the lock before it finalizes the store (index, embeddings,
``complete: true``) and stops if someone broke it: a converter whose lock was taken never marks the store complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ._errors import StoreLockedError
from ._storage import StoreIO

__all__ = ["LOCK_KEY", "Lock", "acquire", "check", "ensure_held", "read_lock", "release"]

LOCK_KEY = ".rxrx2-zarr.lock"
#: Suffix of the temporary objects of this module (and of StoreIO's atomic writes): left behind only by a process
#: killed mid-write, ignored by readers and removed by ``--resume``.
PARTIAL_SUFFIX = ".partial"
#: A PID counts as reused when its process started this long after the lock was written. Generous, because the
#: wall clock may be stepped between the two readings; erring towards "alive" only means asking for --break-lock.
_REUSE_SLACK_SECONDS = 60.0
#: Rounds of create / take over before giving up (each round only repeats when another process interfered).
_ATTEMPTS = 4


@dataclass(frozen=True)
class Lock:
    host: str
    pid: int
    since: str
    token: str

    def to_json(self) -> bytes:
        return json.dumps({"host": self.host, "pid": self.pid, "since": self.since, "token": self.token}).encode()

    @property
    def readable(self) -> bool:
        return self.pid > 0

    def describe(self) -> str:
        if not self.readable:
            return "an unknown process (the lock file is unreadable)"
        return f"process {self.pid} on host {self.host!r} since {self.since}"


_UNREADABLE = Lock("?", -1, "?", "")


def _new_lock() -> Lock:
    return Lock(socket.gethostname(), os.getpid(), datetime.now(UTC).isoformat(timespec="seconds"), uuid.uuid4().hex)


def _process_start(pid: int) -> float | None:
    """Wall-clock start time of ``pid`` from Linux's /proc (None elsewhere or when unreadable)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
        # fields after the parenthesised command name (which may contain spaces): state is field 3, starttime 22
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def _alive(lock: Lock) -> bool:
    """Is the lock's process (on this host) still running? A PID reused by a later process does not count."""
    try:
        os.kill(lock.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    started = _process_start(lock.pid)
    try:
        since = datetime.fromisoformat(lock.since).timestamp()
    except ValueError:
        return True
    # after a reboot (the usual way a converter dies with its lock held) PIDs are handed out again
    return started is None or started <= since + _REUSE_SLACK_SECONDS


def read_lock(store: StoreIO) -> Lock | None:
    try:
        data: dict[str, Any] = json.loads(store.read(LOCK_KEY))
        return Lock(str(data["host"]), int(data["pid"]), str(data["since"]), str(data.get("token", "")))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return _UNREADABLE  # not written by this module: treated as held by an unknown process


def _judge(store: StoreIO, held: Lock, *, take_over_dead: bool, break_lock: bool) -> None:
    """Raise :class:`StoreLockedError` unless ``held`` may be taken over with these flags."""
    where = store.url
    same_host = held.readable and held.host == socket.gethostname()
    running = same_host and _alive(held)
    if running:
        if break_lock:
            raise StoreLockedError(
                f"{where}: refusing --break-lock: the lock holder, {held.describe()}, is still running on this host; "
                "stop it first"
            )
        raise StoreLockedError(f"{where}: another converter is writing this store: {held.describe()}")
    if break_lock:
        return
    if same_host:
        if take_over_dead:
            return
        raise StoreLockedError(
            f"{where}: locked by {held.describe()}, which is no longer running; rerun with --resume to continue its "
            "conversion (or --overwrite to replace the store)"
        )
    if not held.readable:
        raise StoreLockedError(f"{where}: {LOCK_KEY} exists but is unreadable; if no converter is running, rerun with --break-lock")
    raise StoreLockedError(
        f"{where}: locked by {held.describe()}; this host cannot tell whether it is still running: if that converter "
        "is gone, rerun with --break-lock"
    )


def check(store: StoreIO, *, take_over_dead: bool, break_lock: bool) -> None:
    """Read-only pre-flight of :func:`acquire`: raise as it would, without writing anything to the store."""
    held = read_lock(store)
    if held is not None:
        _judge(store, held, take_over_dead=take_over_dead, break_lock=break_lock)


def _create(store: StoreIO, lock: Lock) -> bool:
    """Create the lock if absent, complete or not at all. Returns False if a lock exists."""
    if not store.local:
        return store.write_exclusive(LOCK_KEY, lock.to_json())
    path = store.path(LOCK_KEY)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{lock.token}{PARTIAL_SUFFIX}"
    with open(tmp, "wb") as handle:
        handle.write(lock.to_json())
    try:
        os.link(tmp, path)  # atomic and exclusive: fails if the lock exists
        return True
    except FileExistsError:
        return False
    except OSError:
        # a filesystem without hard links: O_EXCL (exclusive, though a kill mid-write could leave it empty)
        return store.write_exclusive(LOCK_KEY, lock.to_json())
    finally:
        with contextlib.suppress(FileNotFoundError):  # a --resume cleaning up partial objects may beat us to it
            os.unlink(tmp)


def _take_over(store: StoreIO, stale: Lock, mine: Lock) -> bool:
    """Replace the lock ``stale`` by ``mine``. False when the lock changed meanwhile (the caller starts over)."""
    if not store.local:
        if read_lock(store) != stale:
            return False  # changed since we judged it: start over
        store.delete(LOCK_KEY)
        return store.write_exclusive(LOCK_KEY, mine.to_json())
    path = store.path(LOCK_KEY)
    aside = f"{path}.{mine.token}.stale{PARTIAL_SUFFIX}"
    try:
        os.rename(path, aside)  # atomic: of several converters taking over, exactly one moves the file
    except FileNotFoundError:
        return False
    try:
        with open(aside, "rb") as handle:
            moved = handle.read()
        try:
            moved_token = str(json.loads(moved).get("token", ""))
        except (ValueError, AttributeError):
            moved_token = ""
        if moved_token != stale.token:
            # the lock was replaced between our read and the rename: put the newer lock back, start over
            with contextlib.suppress(FileExistsError):  # yet another lock appeared: that one stands
                os.link(aside, path)
            return False
    except FileNotFoundError:
        return False  # removed under us (cleanup by the new holder): start over
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(aside)
    return _create(store, mine)


def acquire(store: StoreIO, *, take_over_dead: bool, break_lock: bool) -> Lock:
    """Take the destination's lock or raise :class:`StoreLockedError` saying who holds it.

    A lock whose process is gone from this host is taken over when ``take_over_dead`` (``--resume`` or
    ``--overwrite``); a lock from another host (or an unreadable one) only with ``break_lock``.
    """
    mine = _new_lock()
    for _ in range(_ATTEMPTS):
        if _create(store, mine):
            return mine
        held = read_lock(store)
        if held is None:
            continue  # released between our attempt and the read
        _judge(store, held, take_over_dead=take_over_dead, break_lock=break_lock)
        if _take_over(store, held, mine):
            return mine
    held = read_lock(store)
    raise StoreLockedError(f"{store.url}: could not take the lock; it keeps changing hands (now: {held.describe() if held else 'none'})")


def ensure_held(store: StoreIO, lock: Lock) -> None:
    """Raise :class:`StoreLockedError` if ``lock`` is no longer the store's lock (someone used --break-lock)."""
    current = read_lock(store)
    if current != lock:
        holder = current.describe() if current is not None else "nobody (the lock was removed)"
        raise StoreLockedError(
            f"{store.url}: this converter's lock was taken over while it ran; it is now held by {holder}. "
            "Stopping before finalizing the store"
        )


def release(store: StoreIO, lock: Lock) -> None:
    """Remove the lock if it is still ours (someone may have broken it)."""
    current = read_lock(store)
    if current is not None and current.token == lock.token:
        store.delete(LOCK_KEY)
