"""All-or-nothing output: a failed run must not leave a half-written OUTDIR.

Files are produced in a private temporary directory next to OUTDIR and moved in
only after every one of them was written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_outdir(outdir: Path) -> Iterator[Path]:
    """Yield a staging directory; on clean exit move its files into ``outdir``."""
    parent = outdir.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.", dir=parent))
    try:
        yield staging
        if outdir.exists() and not outdir.is_dir():
            raise FileExistsError(f"{outdir} exists and is not a directory")
        if not outdir.exists():
            staging.rename(outdir)
            return
        for item in sorted(staging.iterdir()):
            target = outdir / item.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(item, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
