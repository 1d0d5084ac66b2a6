"""The extension's catalog entry, CMake metadata, pictures and license agree with each other and
with what the Extensions Index checks (Resources/SemiSupSeg.json, top-level CMakeLists.txt)."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CATALOG_ENTRY = REPO_ROOT / "Resources" / "SemiSupSeg.json"
TOP_CMAKE = REPO_ROOT / "CMakeLists.txt"
RAW_URL_PREFIX = "https://raw.githubusercontent.com/semisupseg/SlicerSemiSupSeg/main/"

# Properties of slicer-extension-catalog-entry-schema v1.0.1 (additionalProperties is false).
SCHEMA_PROPERTIES = {
    "$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
    "build_dependencies": list, "build_subdirectory": str, "enabled": bool, "tier": int,
}
SCHEMA_REQUIRED = ("$schema", "category", "scm_url")


def cmake_variables(text: str) -> dict[str, str]:
    """``set(NAME "value")`` / ``set(NAME value)`` pairs of a CMakeLists (one line each)."""
    pattern = re.compile(r'^\s*set\(\s*(\w+)\s+(?:"((?:[^"\\]|\\.)*)"|([^)\s]+))\s*\)', re.MULTILINE)
    return {m.group(1): m.group(2) if m.group(2) is not None else m.group(3) for m in pattern.finditer(text)}


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG header (IHDR is always the first chunk)."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG file"
    return struct.unpack(">II", header[16:24])


@pytest.fixture(scope="module")
def entry() -> dict:
    return json.loads(CATALOG_ENTRY.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def metadata() -> dict[str, str]:
    return cmake_variables(TOP_CMAKE.read_text(encoding="utf-8"))


def test_catalog_entry_follows_the_schema(entry):
    for key in SCHEMA_REQUIRED:
        assert key in entry, f"{CATALOG_ENTRY.name} lacks the required key {key!r}"
    for key, value in entry.items():
        assert key in SCHEMA_PROPERTIES, f"{key!r} is not a property of the catalog entry schema"
        assert isinstance(value, SCHEMA_PROPERTIES[key]), f"{key!r} must be a {SCHEMA_PROPERTIES[key].__name__}"
    assert re.fullmatch(r"https://raw\.githubusercontent\.com/Slicer/Slicer/main/Schemas/"
                        r"slicer-extension-catalog-entry-schema-v1\.0\.\d+\.json#?", entry["$schema"])
    assert 1 <= entry["tier"] <= 5
    assert all(isinstance(name, str) for name in entry["build_dependencies"])


def test_catalog_entry_values(entry):
    assert entry["build_dependencies"] == ["PyTorch"]
    assert entry["build_subdirectory"] == "."
    assert entry["category"] == "Segmentation"
    assert entry["scm_revision"] == "main"
    assert entry["scm_url"] == "https://github.com/semisupseg/SlicerSemiSupSeg"
    assert entry["tier"] == 1


def test_names_follow_the_index_rules(entry):
    """JSON file name == project(); the extension name does not start with "Slicer", the repository's does."""
    project = re.search(r"^\s*project\(\s*(\w+)", TOP_CMAKE.read_text(encoding="utf-8"), re.MULTILINE).group(1)
    assert CATALOG_ENTRY.stem == project == "SemiSupSeg"
    assert not project.startswith("Slicer")
    assert entry["scm_url"].rsplit("/", 1)[-1].startswith("Slicer")


def test_cmake_metadata_matches_the_catalog_entry(entry, metadata):
    for name in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                 "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert metadata.get(name), f"{name} is not set in CMakeLists.txt"
    assert metadata["EXTENSION_CATEGORY"] == entry["category"]
    assert metadata["EXTENSION_DEPENDS"].split(";") == entry["build_dependencies"]
    assert metadata["EXTENSION_HOMEPAGE"] == entry["scm_url"]


def test_icon_and_screenshot_urls_point_at_files_in_the_repository(metadata):
    """The index requires the URLs to resolve: each raw URL must name a file committed here."""
    icon = metadata["EXTENSION_ICONURL"]
    screenshots = metadata["EXTENSION_SCREENSHOTURLS"].split()
    for url in [icon] + screenshots:
        assert url.startswith(RAW_URL_PREFIX), url
        assert (REPO_ROOT / url[len(RAW_URL_PREFIX):]).is_file(), f"{url} names no file of the repository"
    assert png_size(REPO_ROOT / icon[len(RAW_URL_PREFIX):]) == (128, 128)


def test_module_icon_and_license():
    assert png_size(REPO_ROOT / "SemiSupSeg" / "Resources" / "Icons" / "SemiSupSeg.png") == (128, 128)
    license_text = (REPO_ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text
    assert "Copyright 2026 SemiSupSeg contributors" in license_text


def test_requirements_leave_slicers_own_packages_alone():
    lines = (REPO_ROOT / "SemiSupSeg" / "Resources" / "requirements.txt").read_text(encoding="utf-8").splitlines()
    requirements = [line.split("#", 1)[0].strip() for line in lines]
    names = {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements if r}
    assert {"monai", "tqdm"} <= names
    assert not names & {"numpy", "simpleitk", "vtk", "scipy", "torch"}, "Slicer ships these; torch comes from PyTorchUtils"


def test_cmake_minimum_required_has_a_policy_upper_bound():
    """``cmake_minimum_required(VERSION 3.16.3...3.28)``: without the upper bound, CMake 4 refuses a
    project whose minimum is below 3.5's policies and newer CMake 3.x warn; the range sets the
    policies of every version up to 3.28 (issue 20)."""
    match = re.search(r"cmake_minimum_required\(\s*VERSION\s+([0-9.]+)\.\.\.([0-9.]+)\s*\)", TOP_CMAKE.read_text(encoding="utf-8"))
    assert match, "cmake_minimum_required needs a VERSION min...max range"
    low, high = (tuple(int(part) for part in version.split(".")) for version in match.groups())
    assert low == (3, 16, 3) and high >= (3, 28) and high > low
