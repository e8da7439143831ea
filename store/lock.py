"""A lock in the store, for the rare work that must not run twice at once (extending a run).

The lock is an object created with put_if_absent (a conditional create: on S3 `If-None-Match: *`),
so it works across processes and machines with nothing but the store. It names its holder (host,
pid, a token of the holding call, the time it was taken); it is removed when the work ends, also
when it fails. A holder that died without removing it (SIGKILL, a lost node) is recognised: on the
same host by its process being gone (or, in the same process, by its token being no longer held),
elsewhere by the lock's age. Two callers that both find the same dead holder could both take over;
that needs a crash and two concurrent retries at once, and is accepted (docs/storage.md).
"""

import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from esgd.store.base import NotFound, Store, StoreError

STALE_SECONDS = 600.0
"""A lock held longer than this by another host is taken to be a dead holder's: the work it guards
(removing a few objects, writing two) takes seconds."""

_HELD: set[str] = set()
"""Tokens of the locks this process holds now (a lock of this pid with another token is a leftover
of a call that failed in this process)."""


def _alive(holder: dict, now: float, stale: float) -> bool:
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        if holder["pid"] == os.getpid():
            return holder.get("token") in _HELD
        try:
            os.kill(holder["pid"], 0)  # signal 0: does the process exist (it may be another user's)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    since = holder.get("since")
    return isinstance(since, (int, float)) and now - since < stale


def _holder(store: Store, key: str) -> dict | None:
    try:
        data = json.loads(store.get(key))
    except NotFound:
        return None  # released meanwhile
    except ValueError:
        return {}  # torn (its writer died while writing): no holder, stale
    return data if isinstance(data, dict) else {}


@contextmanager
def held(store: Store, key: str, what: str, stale: float = STALE_SECONDS, poll: float = 0.2) -> Iterator[None]:
    """Hold the lock `key` while the block runs: wait while a live holder has it, take over from a
    dead one. `what` says what it guards, for the error raised (StoreError, exit 2) when a holder
    elsewhere is still there after `stale` seconds of waiting."""
    token = uuid.uuid4().hex
    mine = {"host": socket.gethostname(), "pid": os.getpid(), "token": token}
    began = time.time()
    while True:
        now = time.time()
        if store.put_if_absent(key, json.dumps({**mine, "since": now}).encode()):
            break
        holder = _holder(store, key)
        if holder is None:
            continue
        if not _alive(holder, now, stale):
            store.delete(key)  # a dead holder's leftover
            continue
        if now - began > stale:
            raise StoreError(
                f"{what} has waited {now - began:.0f} s for {store.uri}/{key} (held by {holder.get('host')} pid "
                f"{holder.get('pid')}); if no esgd command is at work on it, delete that object and run again"
            )
        time.sleep(poll)
    _HELD.add(token)
    try:
        yield
    finally:
        _HELD.discard(token)
        store.delete(key)
