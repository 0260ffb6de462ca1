"""Files mobiledl writes: atomic, created with the umask's permissions, in their place.

- ``atomic_path`` / ``write_*_atomic``: a reader never sees a half-written model, report or
  artifact; the file gets the permissions the umask gives a new file (or keeps those of the
  file it replaces), not the 0600 of a temporary file.
- ``check_output_file`` / ``check_output_dir``: an output that cannot be written (an existing
  directory, a name longer than the file system allows, a place that is not writable) is a
  one-line ``UserError`` before any work is done; they also serve as argparse types.
- ``confined_path``: a path a recipe names is relative, has no ``..`` and, resolved (symlinks
  followed), stays inside the run directory.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from mobiledl.errors import UserError

#: Longest path and file name accepted where the file system does not say.
PATH_MAX = 4096
NAME_MAX = 255
#: Characters of the target's name kept in its temporary file's name.
TEMP_NAME_CHARS = 80


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    If the body raises, the temporary file is removed and ``path`` is left untouched. A
    target that cannot be written is a ``UserError`` naming it.
    """
    target = check_output_file(path)
    with _os_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{target.name[:TEMP_NAME_CHARS]}."
        fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=target.parent)
        os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with _os_errors(target):
            os.chmod(tmp, _new_file_mode(target))
            os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def current_umask() -> int:
    """The process's umask (read without changing it where the system allows)."""
    with contextlib.suppress(OSError), open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_file_mode(target: Path) -> int:
    """The mode of the file ``target`` replaces, else what the umask gives a new file."""
    with contextlib.suppress(OSError):
        return stat.S_IMODE(target.stat().st_mode)
    return 0o666 & ~current_umask()


@contextlib.contextmanager
def _os_errors(target: Path) -> Iterator[None]:
    """Turn an ``OSError`` while writing ``target`` into one line naming it."""
    try:
        yield
    except OSError as exc:
        raise UserError(f"cannot write {_shown(target)}: {_reason(exc)}") from None


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENAMETOOLONG:
        return "the name is too long for the file system"
    return exc.strerror or type(exc).__name__


def _shown(path: Path | str, limit: int = 120) -> str:
    """``path`` as text, shortened in the middle if long (messages stay one short line)."""
    text = str(path)
    return text if len(text) <= limit else f"{text[: limit // 2]}...{text[-limit // 2 :]}"


# ---------------------------------------------------------------- output paths


def check_output_file(path: str | os.PathLike[str]) -> Path:
    """``path`` as a ``Path`` if a file can be written there; else a ``UserError`` saying why.

    Refused: an empty name, an existing directory, a path or name longer than the file system
    allows, and a place whose nearest existing folder is not a writable directory.
    """
    target = _as_output(path, "output file")
    if target.is_dir():
        raise UserError(
            f"{_shown(target)} is a directory; give a file name (e.g. {_shown(target / 'out')})"
        )
    _check_writable_place(target)
    return target


def check_output_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` as a ``Path`` if a directory can be created or written there."""
    target = _as_output(path, "output directory")
    if target.exists() and not target.is_dir():
        raise UserError(f"{_shown(target)} exists and is not a directory")
    _check_writable_place(target)
    return target


def output_file_arg(text: str) -> Path:
    """argparse ``type=`` for an output file: errors are one line and exit code 2."""
    return _as_arg(check_output_file, text)


def output_dir_arg(text: str) -> Path:
    """argparse ``type=`` for an output directory."""
    return _as_arg(check_output_dir, text)


def _as_arg(check: Any, text: str) -> Path:
    try:
        return check(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _as_output(path: Any, what: str) -> Path:
    if not isinstance(path, str | os.PathLike):
        raise UserError(f"{what} must be a path; got {type(path).__name__}")
    text = os.fspath(path)
    if not isinstance(text, str) or not text.strip() or "\0" in text:
        raise UserError(f"{what} must be a non-empty path without NUL characters")
    target = Path(text)
    if len(os.fsencode(text)) >= PATH_MAX:
        raise UserError(f"{what} path is {len(text)} characters; the limit is {PATH_MAX - 1}")
    limit = _name_max(target)
    for part in target.parts:
        if len(os.fsencode(part)) > limit:
            raise UserError(
                f"{what} name '{_shown(part, 40)}' is {len(part)} characters; the file system "
                f"allows {limit}"
            )
    return target


def _name_max(target: Path) -> int:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return os.pathconf(_existing_ancestor(target), "PC_NAME_MAX")
    return NAME_MAX


def _existing_ancestor(target: Path) -> Path:
    """The nearest folder of ``target`` (or ``target``'s parent chain) that exists."""
    for candidate in (target.absolute(), *target.absolute().parents):
        if candidate.exists():
            return candidate
    return Path("/")


def _check_writable_place(target: Path) -> None:
    """The nearest existing ancestor of ``target``'s folder must be a writable directory."""
    ancestor = _existing_ancestor(target.absolute().parent)
    if not ancestor.is_dir():
        raise UserError(f"cannot write {_shown(target)}: {_shown(ancestor)} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {_shown(target)}: {_shown(ancestor)} is not writable")


# ---------------------------------------------------------------- confinement


def check_relative_name(name: str, what: str) -> str:
    """``name`` if it is a relative path with no ``..`` (on POSIX and Windows rules)."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise UserError(f"{what} must be a non-empty relative path")
    for pure in (PurePosixPath(name), PureWindowsPath(name)):
        if pure.is_absolute() or pure.anchor or ".." in pure.parts:
            raise UserError(
                f"{what} '{_shown(name, 60)}' must be a relative path inside the run directory "
                "(no leading '/', drive or '..')"
            )
    return name


def confined_path(root: Path, name: str, what: str) -> Path:
    """``root / name`` after checking ``name`` (``check_relative_name``) and that the path,
    with symlinks resolved, stays inside ``root``."""
    check_relative_name(name, what)
    path = root / name
    if not path.resolve().is_relative_to(root.resolve()):
        raise UserError(f"{what} '{_shown(name, 60)}' leads outside {root} (through a symlink)")
    return path


def check_file_name(name: Any, what: str) -> str:
    """``name`` if it can be one file name: no separators, no leading dot, at most 100
    characters (step names become checkpoint file names)."""
    if not isinstance(name, str):
        raise UserError(f"{what} must be a string; got {type(name).__name__}")
    bad = not name or name.startswith(".") or len(name) > 100
    if bad or any(c in name for c in "/\\\0:") or not name.isprintable():
        raise UserError(
            f"{what} '{_shown(name, 40)}' must be 1-100 printable characters without '/', '\\', "
            "':' or a leading '.' (it names a file)"
        )
    return name


def partial_path(path: Path) -> Path:
    """Where a long run keeps its latest checkpoint until ``path`` is written at the end
    (``model.pt`` -> ``model.pt.partial``), so a failed run leaves ``path`` as it was."""
    return check_output_file(path.with_name(f"{path.name}.partial"))


@contextlib.contextmanager
def removed_on_error(path: Path) -> Iterator[None]:
    """Delete ``path`` if the body raises (a run that failed leaves no partial output; one
    killed outright keeps it)."""
    try:
        yield
    except BaseException:
        path.unlink(missing_ok=True)
        raise
