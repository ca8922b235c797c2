"""Serve stage: the process around the server — event loop (uvloop when importable),
file-descriptor limit, privilege drop. Inputs: a coroutine, a user name, paths. Outputs:
the process state changed. Standard library only (uvloop optional, imported by name).
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import os
import pwd
import resource
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from scriptgen.errors import ServeError

__all__ = ["drop_privileges", "freeze_loaded", "lookup_user", "loop_factory", "raise_file_limit", "run"]

T = TypeVar("T")


def loop_factory() -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    """uvloop's event loop when it is installed, else asyncio's; and the name of the one used."""
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return None, "asyncio"
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory, "uvloop"


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion on a new event loop (uvloop when importable)."""
    factory, _ = loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def freeze_loaded() -> None:
    """Tune the cyclic garbage collector for serving. Call once, when serving starts.

    Every object alive now (the models, the server) leaves the collector's reach, so a full
    collection walks only what sessions made since. A session's objects (records, events)
    live milliseconds and hold no cycles: collecting after 20,000 new objects rather than
    700 lets most of them be freed before the collector ever visits them."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)


def raise_file_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards `wanted` (up to the hard limit); the new soft
    limit. Each connection holds one descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def lookup_user(user: str) -> tuple[int, int]:
    """The (uid, gid) of `user`, a name or a numeric uid; ServeError if there is none."""
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise ServeError(f"--user {user}: no such user") from None
    return entry.pw_uid, entry.pw_gid


def drop_privileges(user: str) -> tuple[int, int]:
    """Become `user` (a name or a numeric uid) for good: drop supplementary groups, then
    setgid and setuid. Call after binding the listeners; nothing is chowned (the log
    directory is made the user's when created: logdir.py). Returns (uid, gid)."""
    uid, gid = lookup_user(user)
    try:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    except PermissionError as exc:
        raise ServeError(f"--user {user}: cannot switch to uid {uid} ({exc.strerror}); run as root, "
                         f"or without --user") from None
    if uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            return uid, gid
        raise ServeError(f"--user {user}: root privileges could be regained after dropping them")
    return uid, gid
