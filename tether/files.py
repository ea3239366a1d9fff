"""Writing outputs safely: whole or not at all, readable as the user's umask says, and with
errors that name the user's path.

Every file and directory tether produces is written beside its target under a temporary name
and renamed into place, so a reader (or a run killed at any moment) sees the old complete
output or the new complete one, never half of one. Python's temporary files are private
(0600, directories 0700) whatever the umask; they are given the umask's modes before the
rename, so colleagues on a shared cluster can open a report or load a model. A failed write
removes its temporary file and reports the target path, not the temporary one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tether.errors import UserError


def umask() -> int:
    """The process's umask. Read from /proc where there is one: os.umask can only read it by
    setting it, which for a moment would change it for every thread (the labeling server's
    among them), so a file another thread creates then could come out world-writable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_output(path: str | os.PathLike, what: str = "output") -> Path:
    """Fail now, before any work, if `path` cannot be written as a file: an existing
    directory, or a directory to put it in that cannot be created or written."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory; give a file path")
    _check_writable(path, path.parent, what)
    return path


def check_dir(path: str | os.PathLike, what: str = "run_dir") -> Path:
    """Fail now, before any work, if `path` cannot be a directory to write in; nothing is
    created (a run that stops on bad data leaves no empty run directory behind)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a directory")
    _check_writable(path, path, what)
    return path


def _check_writable(target: Path, directory: Path, what: str) -> None:
    """`directory`, or the nearest of its parents that exists (the rest are made on
    writing), must be a directory this process can write in."""
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    if not directory.is_dir() or not os.access(directory, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {what} {target}: {directory} is not a writable "
                        f"directory")


@contextmanager
def _named(path: Path) -> Iterator[None]:
    """OS errors re-raised as a user error naming `path` (not the temporary file)."""
    try:
        yield
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` at once (a rename), with the umask's file mode."""
    path = Path(path)
    with _named(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~umask())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def atomic_write_jsonl(path: str | os.PathLike, rows: list) -> Path:
    """One JSON object per line, UTF-8 kept readable, written atomically."""
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                           for r in rows))


@contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """A temporary directory beside `target` to fill; on success it replaces `target` (with
    the umask's modes throughout), on failure it is removed and `target` is left as it was."""
    target = Path(target)
    with _named(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield tmp
        with _named(target):
            share_modes(tmp)
            replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def share_modes(root: Path) -> None:
    """Give a tree written through private temporary files the modes the umask asks for."""
    mask = umask()
    os.chmod(root, 0o777 & ~mask)
    for directory, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(directory, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(directory, name), 0o666 & ~mask)


def replace_dir(tmp: Path, target: Path) -> None:
    """Move a finished directory into place, replacing any older one at `target`."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(target, old)
    os.rename(tmp, target)
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
