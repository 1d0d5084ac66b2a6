"""What changed in the workspace while a run trains: new and removed cases, changed label files.

The annotator's corrections reach the running worker through the workspace folder: Slicer adds a
case to ``dataset.json`` or rewrites a label file (atomically) in place. The trainer looks every
``reload_every`` iterations, and that look must cost next to nothing when nothing changed, because
it happens inside the training loop. So files are compared in two steps:

1. ``os.stat``: (inode, size, mtime_ns) of ``dataset.json`` and of every label file in use.
   Unchanged stamps mean unchanged files; this is one system call per case. The inode catches an
   atomic replace (a new file) even within one tick of a coarse file-system clock.
2. Only a file whose stamp changed is read and hashed (sha256), and a case counts as relabelled
   only when the *content* differs: a label rewritten with the same voxels (Slicer saving
   again) changes nothing, while a corrected label file under the same name is noticed even
   though ``dataset.json`` did not change.

A case's state is its role in the run (labelled, unlabelled, held out) and the digest of the
label it is trained with (``None`` when its label is not used).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .manifest import sha256_of

LABELLED, UNLABELLED, HELD_OUT = "labelled", "unlabelled", "held_out"

CaseState = Tuple[str, Optional[str]]  # (role, sha256 of the label in use or None)


Stamp = Tuple[int, int, int]


def file_stamp(path: Path) -> Optional[Stamp]:
    """(inode, size, mtime_ns) of ``path``, or None when it does not exist."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns


class ContentDigests:
    """sha256 of files, recomputed only when a file's stamp (inode, size, mtime_ns) changed.

    ``hashed`` counts the files actually read, so a test can assert that an unchanged workspace
    costs no reading at all.
    """

    def __init__(self) -> None:
        self._known: Dict[Path, Tuple[Stamp, str]] = {}
        self.hashed = 0

    def digest(self, path: Path) -> Optional[str]:
        """The file's sha256, or None when the file is missing."""
        stamp = file_stamp(path)
        if stamp is None:
            return None
        known = self._known.get(path)
        if known is not None and known[0] == stamp:
            return known[1]
        value = sha256_of(path)
        self.hashed += 1
        self._known[path] = (stamp, value)
        return value


def case_states(split, digests: ContentDigests) -> Dict[str, CaseState]:
    """Each case of ``split`` (a ``CaseSplit``) -> (role, digest of the label it trains with)."""
    states = {case.id: (LABELLED, digests.digest(case.label)) for case in split.labelled}
    states.update({case.id: (UNLABELLED, None) for case in split.unlabelled})
    states.update({case.id: (HELD_OUT, None) for case in split.held_out})
    return states


@dataclass
class WorkspaceChange:
    """Case ids that differ between two states of the workspace.

    added: new in ``dataset.json``;  removed: gone from it;  relabelled: the label a case trains
    with changed (new content, or the case gained or lost its label);  moved: same label, other
    role (e.g. a case moved to the held-out set).
    """

    added: List[str] = field(default_factory=list)
    removed: List[str] = field(default_factory=list)
    relabelled: List[str] = field(default_factory=list)
    moved: List[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.relabelled or self.moved)

    def discard(self, case_id: str) -> None:
        """Leave ``case_id`` out of every list (its change is not taken in)."""
        for ids in (self.added, self.removed, self.relabelled, self.moved):
            if case_id in ids:
                ids.remove(case_id)


def compare_states(old: Dict[str, CaseState], new: Dict[str, CaseState]) -> WorkspaceChange:
    """What changed from ``old`` to ``new`` (both from ``case_states``), in ``new``'s order."""
    change = WorkspaceChange(removed=[case for case in old if case not in new])
    for case, (role, digest) in new.items():
        if case not in old:
            change.added.append(case)
        elif old[case][1] != digest or (role != old[case][0] and LABELLED in (role, old[case][0])):
            change.relabelled.append(case)
        elif old[case][0] != role:
            change.moved.append(case)
    return change
