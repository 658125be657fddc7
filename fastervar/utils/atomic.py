"""Write-to-temp-then-rename, for files and folders alike: an interrupted or failed write never
leaves a partial file or folder behind, and a reader sees the old version or the new one whole.

The one atomic-write helper of the package: profiles, checkpoints, caches, reports, bundles and
image folders all go through it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import FastervarError


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _cannot(dest: Path, exc: OSError) -> FastervarError:
    return FastervarError(f"cannot write {dest}: {exc.strerror or exc}")


@contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `dest`; on success it replaces `dest`, on failure it is removed."""
    d = Path(dest)
    try:
        d.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d.parent, prefix=f".{d.name}.", suffix=".tmp")
    except OSError as exc:
        raise _cannot(d, exc) from None
    os.close(fd)
    try:
        yield Path(tmp)
        try:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make outputs unreadable to others
            os.replace(tmp, d)
        except OSError as exc:
            raise _cannot(d, exc) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp directory beside `dest`; on success it becomes `dest` (replacing an old one),
    on failure or Ctrl-C it is removed, so no half-written directory is ever left."""
    d = Path(dest)
    try:
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=d.parent, prefix=f".{d.name}.", suffix=".tmp"))
    except OSError as exc:
        raise _cannot(d, exc) from None
    old = None
    try:
        yield tmp
        try:
            os.chmod(tmp, 0o777 & ~_umask())
            if d.exists():
                old = Path(tempfile.mkdtemp(dir=d.parent, prefix=f".{d.name}.", suffix=".old"))
                os.replace(d, old / "previous")
            os.replace(tmp, d)
        except OSError as exc:
            if old is not None and (old / "previous").exists() and not d.exists():
                os.replace(old / "previous", d)          # put the old version back
            raise _cannot(d, exc) from None
    finally:
        for leftover in (tmp, old):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
