"""Atomic file writes and content digests shared by the Slicer-side writers.

Every file SemiSupSeg writes (workspace images and labels, dataset.json, run configs, exports)
goes through :func:`atomicWrite`: the content is written to a temporary name in the destination
folder and then renamed over the destination, so a reader (the engine, another program) never
sees a half-written file, and a failure leaves the previous file intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Callable

# Multi-part extensions that file-format detection (ITK, Slicer storage nodes) relies on: the
# temporary name must keep them or the writer would pick the wrong format.
_COMPOUND_EXTENSIONS = (".seg.nrrd", ".nii.gz", ".seg.nii.gz")


def splitExtension(path: str | os.PathLike) -> tuple[str, str]:
    """``"a/b.nii.gz" -> ("a/b", ".nii.gz")``; knows the compound medical-image extensions."""
    text = str(path)
    lower = text.lower()
    for extension in _COMPOUND_EXTENSIONS:
        if lower.endswith(extension):
            return text[: -len(extension)], text[-len(extension):]
    stem, extension = os.path.splitext(text)
    return stem, extension


def temporaryPathFor(path: str | os.PathLike) -> Path:
    """A unique hidden sibling of ``path`` that keeps its extension (same folder, so rename is atomic)."""
    path = Path(path)
    stem, extension = splitExtension(path.name)
    return path.with_name(f".{stem}.tmp-{secrets.token_hex(4)}{extension}")


def atomicWrite(path: str | os.PathLike, writeTo: Callable[[Path], object]) -> Path:
    """Call ``writeTo(temporaryPath)``, then rename the result onto ``path``.

    ``writeTo`` may return ``False`` to signal failure; the temporary file is then removed and
    ``OSError`` raised. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporaryPathFor(path)
    try:
        result = writeTo(temporary)
        if result is False:
            raise OSError(f"Writing {path} failed (see the application log for the reason).")
        if not temporary.exists():
            raise OSError(f"Writing {path} produced no file.")
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    return path


def atomicWriteText(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically."""
    return atomicWrite(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def atomicWriteJson(path: str | os.PathLike, content: object) -> Path:
    """Write ``content`` as indented JSON atomically."""
    return atomicWriteText(path, jsonText(content))


def jsonText(content: object) -> str:
    """The canonical JSON text SemiSupSeg writes (indented, trailing newline)."""
    return json.dumps(content, indent=2) + "\n"


def readJson(path: str | os.PathLike, default: object = None) -> object:
    """JSON content of ``path``, or ``default`` when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return default
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


def sha256File(path: str | os.PathLike, chunkSize: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(chunkSize), b""):
            digest.update(chunk)
    return digest.hexdigest()
