"""Regenerate the file lists of SemiSupSeg/CMakeLists.txt from the files on disk.

Slicer's ``slicerMacroBuildScriptedModule`` installs only the files it is given, so a Python file
that is not listed works in a developer checkout and is missing from the installed extension.
This script rewrites the two lists between their marker comments:

    # BEGIN generated MODULE_PYTHON_SCRIPTS      every shipped .py file
    # END generated MODULE_PYTHON_SCRIPTS
    # BEGIN generated MODULE_PYTHON_RESOURCES    every other shipped file (.ui, icons, requirements.txt, data)
    # END generated MODULE_PYTHON_RESOURCES

Shipped = the files under SemiSupSeg/ that git tracks or would track (tracked plus untracked,
not ignored), less CMakeLists.txt, caches and tests. Without git (an unpacked archive) the
folder is walked instead.

    python Testing/cmake/update_module_file_list.py           # rewrite the lists
    python Testing/cmake/update_module_file_list.py --check   # exit 1 when they are out of date
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path, PurePosixPath

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODULE_DIR = REPO_ROOT / "SemiSupSeg"
SCRIPTS_LIST = "MODULE_PYTHON_SCRIPTS"
RESOURCES_LIST = "MODULE_PYTHON_RESOURCES"
COMMAND = "python Testing/cmake/update_module_file_list.py"

# Folder names whose content is never installed: byte code, and tests (module tests live in
# Testing/, pytest suites in the repository's top-level Testing/).
EXCLUDED_DIRS = frozenset({"__pycache__", ".pytest_cache", "tests", "test", "Testing"})
EXCLUDED_SUFFIXES = frozenset({".pyc", ".pyo", ".orig", ".rej", ".swp"})


def begin_marker(list_name: str) -> str:
    return f"# BEGIN generated {list_name}"


def end_marker(list_name: str) -> str:
    return f"# END generated {list_name}"


def is_shipped(relative: PurePosixPath) -> bool:
    """Whether a file (path relative to the module folder) belongs in the installed module."""
    if relative == PurePosixPath("CMakeLists.txt"):
        return False
    if any(part in EXCLUDED_DIRS or part.startswith(".") for part in relative.parts):
        return False
    name = relative.name
    if relative.suffix in EXCLUDED_SUFFIXES:
        return False
    if name == "conftest.py" or (name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py"))):
        return False
    return True


def _git_candidates(module_dir: Path) -> list[PurePosixPath] | None:
    """Tracked and untracked-but-not-ignored files under ``module_dir``; None without git."""
    try:
        completed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "."],
            cwd=module_dir, capture_output=True, check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None  # git missing, or not a work tree
    paths = {PurePosixPath(p) for p in completed.stdout.decode("utf-8").split("\0") if p}
    # --cached also lists files deleted from the work tree but not yet from the index.
    return sorted(p for p in paths if (module_dir / p).is_file())


def _walk_candidates(module_dir: Path) -> list[PurePosixPath]:
    found = []
    for root, dirs, files in os.walk(module_dir):
        dirs[:] = [d for d in dirs if d not in EXCLUDED_DIRS and not d.startswith(".")]
        for name in files:
            found.append(PurePosixPath(Path(root, name).relative_to(module_dir).as_posix()))
    return sorted(found)


def shipped_files(module_dir: Path = DEFAULT_MODULE_DIR) -> list[PurePosixPath]:
    """Every file to install, relative to ``module_dir``, sorted."""
    candidates = _git_candidates(module_dir)
    if candidates is None:
        candidates = _walk_candidates(module_dir)
    return [p for p in candidates if is_shipped(p)]


def expected_lists(module_dir: Path = DEFAULT_MODULE_DIR) -> dict[str, list[str]]:
    """{list name: entries}: .py files are scripts (the module's main script first), the rest resources."""
    main_script = f"{module_dir.name}.py"
    files = [p.as_posix() for p in shipped_files(module_dir)]
    for entry in files:
        if any(ch.isspace() for ch in entry) or ";" in entry:
            raise ValueError(f"{entry!r}: spaces and ';' break CMake lists; rename the file.")
    scripts = sorted((f for f in files if f.endswith(".py")), key=lambda f: (f != main_script, f))
    resources = [f for f in files if not f.endswith(".py")]
    return {SCRIPTS_LIST: scripts, RESOURCES_LIST: resources}


def _block_pattern(list_name: str) -> re.Pattern:
    return re.compile(
        r"^(?P<indent>[ \t]*)" + re.escape(begin_marker(list_name)) + r"[^\n]*\n"
        r"(?P<body>.*?)"
        r"^[ \t]*" + re.escape(end_marker(list_name)) + r"[^\n]*$",
        re.MULTILINE | re.DOTALL,
    )


def read_list(cmake_text: str, list_name: str) -> list[str]:
    """Entries between the markers of ``list_name`` (comments and blank lines skipped)."""
    match = _block_pattern(list_name).search(cmake_text)
    if match is None:
        raise ValueError(f"markers for {list_name} not found: add '{begin_marker(list_name)}' and "
                         f"'{end_marker(list_name)}' lines inside set({list_name} ...)")
    entries = []
    for line in match.group("body").splitlines():
        line = line.split("#", 1)[0].strip()
        entries.extend(line.split())
    return entries


def replace_list(cmake_text: str, list_name: str, entries: list[str]) -> str:
    """``cmake_text`` with the block of ``list_name`` holding exactly ``entries``."""
    read_list(cmake_text, list_name)  # raises a clear error when the markers are missing

    def block(match: re.Match) -> str:
        indent = match.group("indent")
        lines = [indent + begin_marker(list_name)] + [indent + e for e in entries] + [indent + end_marker(list_name)]
        return "\n".join(lines)

    return _block_pattern(list_name).sub(block, cmake_text, count=1)


def update(module_dir: Path = DEFAULT_MODULE_DIR) -> bool:
    """Rewrite ``module_dir``/CMakeLists.txt; True when its content changed."""
    cmake_file = module_dir / "CMakeLists.txt"
    old = cmake_file.read_text(encoding="utf-8")
    new = old
    for list_name, entries in expected_lists(module_dir).items():
        new = replace_list(new, list_name, entries)
    if new == old:
        return False
    tmp = cmake_file.with_name(cmake_file.name + ".tmp")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, cmake_file)  # atomic: a reader never sees half a file
    return True


def differences(module_dir: Path = DEFAULT_MODULE_DIR) -> list[str]:
    """Human-readable lines, one per file missing from or stale in the CMake lists; empty when in sync."""
    text = (module_dir / "CMakeLists.txt").read_text(encoding="utf-8")
    lines = []
    for list_name, expected in expected_lists(module_dir).items():
        listed = read_list(text, list_name)
        own = [f"{list_name}: not listed (would not be installed): {f}" for f in expected if f not in listed]
        own += [f"{list_name}: listed but not a shipped file: {f}" for f in listed if f not in expected]
        if not own and listed != expected:
            own.append(f"{list_name}: same files, different order or repeated entries")
        lines += own
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report; exit 1 when the lists are out of date")
    parser.add_argument("--module-dir", type=Path, default=DEFAULT_MODULE_DIR, help="module folder (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.check:
        problems = differences(args.module_dir)
        for line in problems:
            print(line)
        if problems:
            print(f"The file lists in {args.module_dir / 'CMakeLists.txt'} are out of date: run `{COMMAND}`.")
            return 1
        return 0
    changed = update(args.module_dir)
    print(("Updated " if changed else "Already up to date: ") + str(args.module_dir / "CMakeLists.txt"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
