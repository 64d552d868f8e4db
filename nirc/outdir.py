"""All-or-nothing output, and private working directories that do not outlive nirc.

A failed run must not leave a half-written OUTDIR: files are written into a
hidden staging directory next to OUTDIR and moved in only after every one of
them was written. Scratch files (Vela's working files) go to a private
directory in the system temp dir. Both are removed on any exit Python sees
(errors, Ctrl-C, and SIGTERM/SIGHUP, which the CLI turns into an exception);
a SIGKILL cannot be seen, so both names carry the owner's pid and the next run
removes those whose owner is gone.

New directories are created with the umask's permissions (0755 usually), not
``mkdtemp``'s 0700: the output is meant to be shared like any other build output.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nirc.errors import OutputError

_TAG = "nirc"
_STALE = re.compile(rf"{_TAG}-(\d+)-")


def _private_dir(parent: Path, prefix: str) -> Path:
    """A fresh directory named ``<prefix>nirc-<pid>-<random>``, with normal (umask) permissions.

    ``os.mkdir(..., 0o777)`` lets the kernel apply the umask; reading the umask instead would
    mean setting it, which is not thread-safe.
    """
    for _ in range(100):
        path = parent / f"{prefix}{_TAG}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.mkdir(path, 0o777)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(errno.EEXIST, f"no free name for a {prefix}{_TAG}-* directory", str(parent))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(parent: Path, prefix: str) -> list[Path]:
    """Remove ``<prefix>nirc-<pid>-*`` directories in ``parent`` whose process no longer exists."""
    removed = []
    with contextlib.suppress(OSError):
        for path in parent.glob(f"{prefix}{_TAG}-*-*"):
            match = _STALE.match(path.name[len(prefix) :])
            if match and path.is_dir() and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """A private directory in the system temp dir, removed on exit."""
    parent = Path(tempfile.gettempdir())
    remove_stale(parent, "")
    path = _private_dir(parent, "")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _problem(outdir: Path, exc: OSError) -> OutputError:
    """One line naming OUTDIR (never the hidden staging name) and what the system said."""
    reason = exc.strerror or type(exc).__name__
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason = f"cannot write there ({reason})"
    elif exc.errno in (errno.EEXIST, errno.ENOTDIR):
        reason = "a parent in the path is a file, not a directory"
    return OutputError(f"{outdir}: {reason}")


def write_file(path: Path, data: bytes) -> None:
    """Write one output file atomically (temporary name, then rename); OSError becomes OutputError."""
    tmp = path.with_name(f".{path.name}.{_TAG}-{os.getpid()}.tmp")
    try:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as exc:
        raise _problem(path, exc) from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def make_dir(path: Path, what: str) -> None:
    """Create a directory the user named (``--dump-ir``), failing with one line that names it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{what} {_problem(path, exc)}") from exc


def check_outdir(outdir: Path) -> None:
    """Fail before any work when OUTDIR cannot take the output (a file, or an unwritable location)."""
    if outdir.exists() and not outdir.is_dir():
        raise OutputError(f"{outdir}: exists and is not a directory (-o names the output directory)")
    with _staging(outdir):
        pass


@contextmanager
def _staging(outdir: Path) -> Iterator[Path]:
    prefix = f".{outdir.name}."
    try:
        parent = outdir.absolute().parent
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale(parent, prefix)
        staging = _private_dir(parent, prefix)
    except OSError as exc:
        raise _problem(outdir, exc) from exc
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def staged_outdir(outdir: Path) -> Iterator[Path]:
    """Yield a staging directory; on clean exit move its entries into ``outdir``.

    Entries already in ``outdir`` with other names are kept; same-named ones are replaced.
    An OSError while writing or moving becomes an :class:`OutputError` naming ``outdir``.
    """
    if outdir.exists() and not outdir.is_dir():
        raise OutputError(f"{outdir}: exists and is not a directory (-o names the output directory)")
    with _staging(outdir) as staging:
        try:
            yield staging
            if not outdir.exists():
                staging.rename(outdir)
                return
            for item in sorted(staging.iterdir()):
                target = outdir / item.name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                os.replace(item, target)
        except OSError as exc:
            raise _problem(outdir, exc) from exc
