"""Configure, build, test, install and package the extension with CMake against the Slicer
stand-in (Testing/cmake/SlicerStandIn), and check that every Python file of the module reaches
the install tree and the package: a file missing from SemiSupSeg/CMakeLists.txt fails here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path, PurePosixPath

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
MODULE_DIR = REPO_ROOT / "SemiSupSeg"
STAND_IN = HERE / "SlicerStandIn"
SCRIPTED_MODULES_DIR = "lib/Slicer-5.12/qt-scripted-modules"  # the stand-in's Slicer version
# Folders and files that never ship (same rule as update_module_file_list.py, written out again
# here so that this test does not trust the script it checks).
NOT_SHIPPED_DIRS = {"__pycache__", "tests", "test", "Testing"}

pytestmark = [
    pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not on PATH"),
    pytest.mark.skipif(shutil.which("cpack") is None, reason="cpack is not on PATH"),
]


def has_compiler() -> bool:
    """project(SemiSupSeg) enables C and C++ (as every Slicer extension does), so CMake needs them."""
    return any(shutil.which(name) for name in ("c++", "g++", "clang++", "cl")) and any(
        shutil.which(name) for name in ("cc", "gcc", "clang", "cl"))


def run(command: list, cwd: Path | None = None) -> subprocess.CompletedProcess:
    completed = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True)
    assert completed.returncode == 0, f"{' '.join(map(str, command))} failed:\n{completed.stdout}\n{completed.stderr}"
    return completed


def shipped_python_files() -> set[str]:
    """Every .py under SemiSupSeg/ except byte code folders and tests, relative to SemiSupSeg/."""
    found = set()
    for root, dirs, files in os.walk(MODULE_DIR):
        dirs[:] = [d for d in dirs if d not in NOT_SHIPPED_DIRS and not d.startswith(".")]
        for name in files:
            if name.endswith(".py") and not name.startswith("test_") and name != "conftest.py":
                found.add(Path(root, name).relative_to(MODULE_DIR).as_posix())
    return found


RESOURCES = {"Resources/UI/SemiSupSeg.ui", "Resources/Icons/SemiSupSeg.png", "Resources/requirements.txt"}


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def archive_module_files(archive: Path) -> set[str]:
    """Files of the package below .../lib/Slicer-X.Y/qt-scripted-modules/, relative to that folder."""
    marker = f"/{SCRIPTED_MODULES_DIR}/"
    with tarfile.open(archive) as tar:
        names = ["/" + member.name.lstrip("./") for member in tar.getmembers() if member.isfile()]
    return {name.split(marker, 1)[1] for name in names if marker in name}


@pytest.mark.skipif(not has_compiler(), reason="no C/C++ compiler: project() cannot be configured")
def test_configure_build_install_package(tmp_path):
    build, prefix = tmp_path / "build", tmp_path / "install"
    run(["cmake", "-S", REPO_ROOT, "-B", build, f"-DSlicer_DIR={STAND_IN}", f"-DPython3_EXECUTABLE={sys.executable}"])
    run(["cmake", "--build", build])
    tests = run(["ctest", "--output-on-failure"], cwd=build).stdout
    assert "py_compile_SemiSupSeg" in tests and "Passed" in tests  # every shipped script compiles
    assert "py_SemiSupSeg" in tests and "Disabled" in tests  # Slicer's own tests: registered, need Slicer
    run(["cmake", "--install", build, "--prefix", prefix])
    run(["cmake", "--build", build, "--target", "package"])

    expected = shipped_python_files() | RESOURCES
    assert "SemiSupSeg.py" in expected and "semisupseg/__init__.py" in expected

    built = files_under(build / SCRIPTED_MODULES_DIR)
    installed = files_under(prefix / SCRIPTED_MODULES_DIR)
    archives = sorted(build.glob("*SemiSupSeg*.tar.gz"))
    assert len(archives) == 1, f"expected one package, found {archives}"
    packaged = archive_module_files(archives[0])

    for where, files in (("build tree", built), ("install tree", installed), ("package", packaged)):
        missing = sorted(expected - files)
        assert not missing, (f"not in the {where}: {missing}. Add them to SemiSupSeg/CMakeLists.txt: "
                             "python Testing/cmake/update_module_file_list.py")
    for where, files in (("install tree", installed), ("package", packaged)):
        junk = sorted(f for f in files if "__pycache__" in f or f.endswith(".pyc") or PurePosixPath(f).name.startswith("test_"))
        assert not junk, f"the {where} holds files that must not ship: {junk}"
    assert installed == packaged

    config = (build / "SemiSupSegConfig.cmake").read_text(encoding="utf-8")
    assert 'set(SemiSupSeg_EXTENSION_DEPENDS "PyTorch")' in config
    assert 'set(SemiSupSeg_EXTENSION_CATEGORY "Segmentation")' in config


MINIMAL_EXTENSION = """cmake_minimum_required(VERSION 3.16.3...3.28)
project({name} LANGUAGES NONE)
set(EXTENSION_HOMEPAGE "https://example.org")
set(EXTENSION_CATEGORY "Segmentation")
set(EXTENSION_CONTRIBUTORS "Someone")
set(EXTENSION_DESCRIPTION "Stand-in check")
set(EXTENSION_ICONURL "https://example.org/icon.png")
set(EXTENSION_SCREENSHOTURLS "https://example.org/shot.png")
set(EXTENSION_DEPENDS "NA")
find_package(Slicer REQUIRED)
include(${{Slicer_USE_FILE}})
slicerMacroBuildScriptedModule(NAME Mini SCRIPTS Mini.py Missing.py RESOURCES Resources/UI/Mini.ui)
include(${{Slicer_EXTENSION_GENERATE_CONFIG}})
include(${{Slicer_EXTENSION_CPACK}})
"""


def configure_minimal(tmp_path: Path, name: str = "Mini") -> subprocess.CompletedProcess:
    source = tmp_path / "src"
    (source / "Resources" / "UI").mkdir(parents=True)
    (source / "Mini.py").write_text("print('mini')\n", encoding="utf-8")
    (source / "Resources" / "UI" / "Mini.ui").write_text("<ui/>\n", encoding="utf-8")
    (source / "CMakeLists.txt").write_text(MINIMAL_EXTENSION.format(name=name), encoding="utf-8")
    return subprocess.run(["cmake", "-S", str(source), "-B", str(tmp_path / "build"), f"-DSlicer_DIR={STAND_IN}"],
                          capture_output=True, text=True)


def test_a_listed_file_that_does_not_exist_stops_the_configure(tmp_path):
    completed = configure_minimal(tmp_path)
    assert completed.returncode != 0
    message = " ".join(completed.stderr.split())  # CMake wraps long messages
    assert "slicerMacroBuildScriptedModule(SCRIPTS) given nonexistent file or directory 'Missing.py'" in message


def test_an_extension_name_starting_with_slicer_is_refused(tmp_path):
    completed = configure_minimal(tmp_path, name="SlicerMini")
    assert completed.returncode != 0
    assert "must not start with 'Slicer'" in " ".join(completed.stderr.split())
