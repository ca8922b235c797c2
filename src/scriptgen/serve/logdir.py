"""Serve stage: the log directory, made and opened without handing anything to anyone.

The server starts as root to bind low ports and then becomes `--user`; its log is written
by that user. Whatever else runs as that user must not be able to turn the start-up into a
write to, or a chown of, a file it could not touch itself (a symlink `events.jsonl ->
/etc/shadow` planted in the directory, a `--log-dir` over a directory of root's files).
So (docs/events.md, "The log directory"):

- `check_log_dir`: a missing directory is created (mode 0750) and given to the writer,
  since the server made it; an existing one must be a real directory (never a symbolic
  link), owned by the writer, and writable by nobody else. Nothing is ever chowned but a
  directory the server has just created.
- `open_log_file`: each log file is opened inside that directory without following a
  link (O_NOFOLLOW, relative to the directory's descriptor), and must be a regular file
  with one link, owned by the writer.
- The writer process drops privileges before it opens any log file (logwriter.py).

Inputs: a path and a uid. Outputs: a created directory, open files, or `ServeError`.
Standard library only.
"""

from __future__ import annotations

import os
import stat

from scriptgen.errors import ServeError

__all__ = ["check_log_dir", "check_no_link", "create_file", "open_dir", "open_log_file"]

# Read too: the JSON lines sink reads its own tail (a partial line to cut, lines to skip).
_FILE_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# A file made new (a recording): it must not exist, so nothing planted can be reused.
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def check_log_dir(path: str, owner: int | None = None, group: int | None = None, *,
                  option: str = "--log-dir") -> None:
    """Make sure `path` is a directory the log can be written in safely by uid `owner`
    (default: this process's), creating it if missing; raise ServeError (one line, naming
    the flag `option` that gave the path) if not."""
    uid = os.geteuid() if owner is None else owner
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        try:
            os.mkdir(path, 0o750)
        except FileExistsError:
            created = False
        else:
            created = True
    except OSError as exc:
        raise ServeError(f"{option} {path}: cannot create it ({exc.strerror})") from None
    if created and uid != os.geteuid():  # made by the server just now: the writer's to write in
        os.chown(path, uid, os.getegid() if group is None else group, follow_symlinks=False)
    fd = _open_dir(path, option)
    try:
        _check_dir(path, os.fstat(fd), uid, option)
    finally:
        os.close(fd)


def open_dir(path: str, option: str = "--log-dir") -> int:
    """A descriptor of the directory `path` (never through a symbolic link), after checking
    it is this process's own and writable by nobody else. Files made relative to it stay
    in that directory even if the path is later swapped for a link."""
    fd = _open_dir(path, option)
    try:
        _check_dir(path, os.fstat(fd), os.geteuid(), option)
    except ServeError:
        os.close(fd)
        raise
    return fd


def create_file(dir_fd: int, name: str, mode: int = 0o640) -> int:
    """A descriptor open for writing on a new file `name` in the directory `dir_fd`.
    FileExistsError if anything (a file, a link, a FIFO) already has that name: nothing
    planted is ever opened or followed."""
    return os.open(name, _NEW_FLAGS, mode, dir_fd=dir_fd)


def open_log_file(path: str) -> int:
    """A descriptor open for appending to the log file `path` (created 0640 if missing),
    after `check_log_dir` of its directory; ServeError if it is not this process's own
    regular file with a single link."""
    directory, name = os.path.split(path)
    dir_fd = _open_dir(directory or ".")
    try:
        _check_dir(directory or ".", os.fstat(dir_fd), os.geteuid())
        try:
            fd = os.open(name, _FILE_FLAGS, 0o640, dir_fd=dir_fd)
        except OSError as exc:  # ELOOP for a symbolic link, ENXIO for a FIFO nobody reads
            raise _file_error(path, dir_fd, name, exc) from None
    finally:
        os.close(dir_fd)
    info = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = "not a regular file"
    elif info.st_nlink != 1:
        problem = f"a file with {info.st_nlink} hard links"
    elif info.st_uid != os.geteuid():
        problem = f"owned by uid {info.st_uid}, not by the uid the log is written as ({os.geteuid()})"
    if problem:
        os.close(fd)
        raise ServeError(f"{path}: {problem}: move it away")
    os.set_blocking(fd, True)
    return fd


def check_no_link(path: str) -> None:
    """ServeError if `path` exists and is not a regular file (a file SQLite opens beside its
    database, `-wal`, `-shm`, `-journal`, must not be a planted link either)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        raise ServeError(f"{path}: not a regular file of one link (the log never follows a link): move it away")


def _open_dir(path: str, option: str = "--log-dir") -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if os.path.islink(path):
            raise ServeError(f"{option} {path}: a symbolic link (to {os.readlink(path)}); give the "
                             f"directory itself") from None
        raise ServeError(f"{option} {path}: {exc.strerror}") from None


def _check_dir(path: str, info: os.stat_result, uid: int, option: str = "--log-dir") -> None:
    if info.st_uid != uid:
        raise ServeError(f"{option} {path}: owned by uid {info.st_uid}, but it is written as uid {uid}: "
                         f"chown it to that user, or give a directory that does not exist yet")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ServeError(f"{option} {path}: writable by other users (mode {stat.filemode(info.st_mode)}): "
                         f"chmod go-w it")


def _file_error(path: str, dir_fd: int, name: str, exc: OSError) -> ServeError:
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return ServeError(f"{path}: {exc.strerror}")
    if stat.S_ISLNK(info.st_mode):
        return ServeError(f"{path}: a symbolic link: the log never follows one; move it away")
    if not stat.S_ISREG(info.st_mode):
        return ServeError(f"{path}: not a regular file: move it away")
    return ServeError(f"{path}: {exc.strerror}")
