"""Atomic file output: write to a temporary file in the target folder, then rename over the target."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_output(path: Path, suffix: str = "") -> Iterator[str]:
    """Yields a temporary file name to write; on success it replaces ``path`` (``os.replace``).

    The temporary file is hidden, in the same folder (so the rename is atomic on one file
    system) and ends with ``suffix`` (writers that pick the format from the extension need it).
    On any failure it is removed and ``path`` is left as it was. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
