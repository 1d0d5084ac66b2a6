"""SemiSupSeg/CMakeLists.txt lists every file the module ships (Slicer installs nothing else),
and the script that regenerates those lists does what it says."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]


def _load_updater():
    spec = importlib.util.spec_from_file_location("update_module_file_list", HERE / "update_module_file_list.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


updater = _load_updater()

CMAKE_TEMPLATE = """set(MODULE_NAME Demo)
set(MODULE_PYTHON_SCRIPTS
  # BEGIN generated MODULE_PYTHON_SCRIPTS
  stale/entry.py
  # END generated MODULE_PYTHON_SCRIPTS
  )
set(MODULE_PYTHON_RESOURCES
  # BEGIN generated MODULE_PYTHON_RESOURCES
  # END generated MODULE_PYTHON_RESOURCES
  )
slicerMacroBuildScriptedModule(NAME Demo SCRIPTS ${MODULE_PYTHON_SCRIPTS} RESOURCES ${MODULE_PYTHON_RESOURCES})
"""


def test_cmake_lists_match_the_files_on_disk():
    problems = updater.differences(updater.DEFAULT_MODULE_DIR)
    assert not problems, (
        "SemiSupSeg/CMakeLists.txt is out of date (a file missing there is missing from the installed "
        f"extension). Run `{updater.COMMAND}`.\n" + "\n".join(problems)
    )


def test_every_listed_file_exists():
    text = (updater.DEFAULT_MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    for list_name in (updater.SCRIPTS_LIST, updater.RESOURCES_LIST):
        for entry in updater.read_list(text, list_name):
            assert (updater.DEFAULT_MODULE_DIR / entry).is_file(), f"{list_name} lists {entry}, which does not exist"


def test_the_main_parts_are_listed():
    scripts = updater.read_list((updater.DEFAULT_MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8"),
                                updater.SCRIPTS_LIST)
    assert scripts[0] == "SemiSupSeg.py"
    assert "SemiSupSegLib/__init__.py" in scripts or not (updater.DEFAULT_MODULE_DIR / "SemiSupSegLib/__init__.py").exists()
    assert "semisupseg/__init__.py" in scripts


@pytest.mark.parametrize(
    "relative, shipped",
    [
        ("Demo.py", True),
        ("DemoLib/core.py", True),
        ("engine/sub/deep.py", True),
        ("Resources/UI/Demo.ui", True),
        ("CMakeLists.txt", False),
        ("engine/sub/CMakeLists.txt", True),  # only the module's own CMakeLists is build-only
        ("engine/__pycache__/core.cpython-311.pyc", False),
        ("engine/core.pyc", False),
        ("engine/tests/helpers.py", False),
        ("Testing/Python/DemoTest.py", False),
        ("engine/test_core.py", False),
        ("engine/core_test.py", False),
        ("engine/conftest.py", False),
        ("engine/.hidden.json", False),
        ("engine/testing_utils.py", True),  # "test" inside a name is fine
    ],
)
def test_is_shipped(relative, shipped):
    from pathlib import PurePosixPath

    assert updater.is_shipped(PurePosixPath(relative)) is shipped


def _make_module(root: Path) -> Path:
    module = root / "Demo"
    files = {
        "Demo.py": "", "DemoLib/__init__.py": "", "engine/__init__.py": "", "engine/sub/deep.py": "",
        "engine/tests/test_deep.py": "", "engine/__pycache__/deep.cpython-311.pyc": "", "Resources/UI/Demo.ui": "<ui/>",
        "Resources/Icons/Demo.png": "png", "Resources/requirements.txt": "monai\n", "engine/data.json": "{}",
        "scratch.tmp": "ignored by .gitignore",
    }
    for relative, content in files.items():
        (module / relative).parent.mkdir(parents=True, exist_ok=True)
        (module / relative).write_text(content, encoding="utf-8")
    (module / "CMakeLists.txt").write_text(CMAKE_TEMPLATE, encoding="utf-8")
    (root / ".gitignore").write_text("*.tmp\n__pycache__/\n", encoding="utf-8")
    return module


EXPECTED_SCRIPTS = ["Demo.py", "DemoLib/__init__.py", "engine/__init__.py", "engine/sub/deep.py"]
EXPECTED_RESOURCES = ["Resources/Icons/Demo.png", "Resources/UI/Demo.ui", "Resources/requirements.txt", "engine/data.json"]


def _lists(module: Path) -> tuple[list[str], list[str]]:
    text = (module / "CMakeLists.txt").read_text(encoding="utf-8")
    return updater.read_list(text, updater.SCRIPTS_LIST), updater.read_list(text, updater.RESOURCES_LIST)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_update_in_a_git_work_tree(tmp_path):
    module = _make_module(tmp_path)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    assert updater.update(module) is True
    scripts, resources = _lists(module)
    assert scripts == EXPECTED_SCRIPTS  # stale entry gone, tests and byte code left out, main script first
    assert resources == EXPECTED_RESOURCES  # scratch.tmp is git-ignored
    assert "slicerMacroBuildScriptedModule(NAME Demo" in (module / "CMakeLists.txt").read_text(encoding="utf-8")
    assert updater.update(module) is False  # idempotent
    assert updater.differences(module) == []


def test_update_without_git_walks_the_folder(tmp_path, monkeypatch):
    module = _make_module(tmp_path)
    monkeypatch.setattr(updater, "_git_candidates", lambda module_dir: None)
    updater.update(module)
    scripts, resources = _lists(module)
    assert scripts == EXPECTED_SCRIPTS
    assert resources == sorted(EXPECTED_RESOURCES + ["scratch.tmp"])  # no .gitignore without git


def test_check_mode_reports_a_new_file(tmp_path, capsys):
    module = _make_module(tmp_path)
    updater.update(module)
    assert updater.main(["--check", "--module-dir", str(module)]) == 0
    (module / "engine" / "added.py").write_text("", encoding="utf-8")
    assert updater.main(["--check", "--module-dir", str(module)]) == 1
    output = capsys.readouterr().out
    assert "engine/added.py" in output and updater.COMMAND in output
    (module / "engine" / "added.py").unlink()
    (module / "Demo.py").unlink()
    assert updater.main(["--check", "--module-dir", str(module)]) == 1
    assert "listed but not a shipped file: Demo.py" in capsys.readouterr().out


def test_missing_markers_give_a_clear_error(tmp_path):
    module = _make_module(tmp_path)
    (module / "CMakeLists.txt").write_text("set(MODULE_PYTHON_SCRIPTS Demo.py)\n", encoding="utf-8")
    with pytest.raises(ValueError, match="markers for MODULE_PYTHON_SCRIPTS not found"):
        updater.update(module)
