"""The GUI layer without Slicer: SemiSupSeg.py against its .ui file and against the Slicer logic it
calls, and the layer rules it keeps. Its plain helpers are tested in test_gui_helpers.py.

What needs the Slicer application (the widget itself, SemiSupSegTest) runs with `Slicer --testing`.
"""

from __future__ import annotations

import ast
import py_compile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from gui_module import LIB_DIR, MODULE_DIR, MODULE_FILE, evaluate, module_constants

UI_FILE = MODULE_DIR / "Resources" / "UI" / "SemiSupSeg.ui"

# Which widget class can show which field type: the GUI connectors of Slicer's parameterNodeWrapper
# (Base/Python/slicer/parameterNodeWrapper/guiConnectors.py) match on the exact widget class.
CONNECTABLE = {
    "QCheckBox": {"bool"},
    "QPushButton": {"bool"},
    "QSpinBox": {"int"},
    "QSlider": {"int"},
    "QDoubleSpinBox": {"float"},
    "ctkSliderWidget": {"float"},
    "QComboBox": {"str", "int", "float", "bool"},
    "QLineEdit": {"str"},
    "QTextEdit": {"str"},
    "ctkPathLineEdit": {"pathlib.Path"},
    "ctkDirectoryButton": {"pathlib.Path"},
}
NEEDS_BOUNDS = {"QSlider", "ctkSliderWidget"}  # the connector refuses an unbounded value
NEEDS_CHOICE = {"QComboBox"}  # the str connector needs Choice([...]) to fill the items


# -- parsing ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ui_root() -> ElementTree.Element:
    return ElementTree.parse(UI_FILE).getroot()


@pytest.fixture(scope="module")
def ui_widgets(ui_root) -> dict[str, ElementTree.Element]:
    return {widget.get("name"): widget for widget in ui_root.iter("widget")}


@pytest.fixture(scope="module")
def module_tree() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text(encoding="utf-8"))


def parameter_fields(tree: ast.Module) -> dict[str, dict]:
    """Fields of the @parameterNodeWrapper class: {name: {"type", "validators", "annotation"}}."""
    constants = module_constants(tree)
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef)
               and any(ast.unparse(d) == "parameterNodeWrapper" for d in node.decorator_list)]
    assert [c.name for c in classes] == ["SemiSupSegParameterNode"]
    fields = {}
    for statement in classes[0].body:
        if not isinstance(statement, ast.AnnAssign):
            continue
        annotation = statement.annotation
        validators = {}
        if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value) == "Annotated":
            base, *extras = annotation.slice.elts
            for extra in extras:
                validators[ast.unparse(extra.func)] = [evaluate(a, constants) for a in extra.args]
        else:
            base = annotation
        default = evaluate(statement.value, constants) if statement.value is not None else None
        fields[statement.target.id] = {"type": ast.unparse(base), "validators": validators, "default": default}
    return fields


def ui_parameter_bindings(ui_root) -> dict[str, tuple[str, str]]:
    """{parameter name: (widget class, widget name)} from SlicerParameterName dynamic properties."""
    bindings = {}
    for widget in ui_root.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                name = prop.find("string").text
                assert name not in bindings, f"two widgets bound to {name}"
                bindings[name] = (widget.get("class"), widget.get("name"))
    return bindings


def combo_items(widget: ElementTree.Element) -> list[str]:
    return [item.find("property/string").text for item in widget.findall("item")]


# -- the .ui file -------------------------------------------------------------------------


def test_ui_is_a_designer_file_with_unique_names(ui_root, ui_widgets):
    assert ui_root.tag == "ui" and ui_root.find("class").text == "SemiSupSeg"
    top = ui_root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "SemiSupSeg"
    names = [widget.get("name") for widget in ui_root.iter("widget")]
    assert len(names) == len(set(names)), "widget object names must be unique (childWidgetVariables)"
    declared = {custom.find("class").text for custom in ui_root.iter("customwidget")}
    used = {widget.get("class") for widget in ui_root.iter("widget")}
    assert {c for c in used if c.startswith(("ctk", "qMRML"))} <= declared


def test_sections(ui_widgets):
    titles = {w.find("property[@name='text']/string").text for w in ui_widgets.values()
              if w.get("class") == "ctkCollapsibleButton"}
    assert titles == {"Cases", "Training", "Advanced", "Review", "Export"}
    advanced = ui_widgets["advancedCollapsibleButton"]
    assert advanced.find("property[@name='collapsed']/bool").text == "true"


def test_every_bound_parameter_is_a_field_of_the_parameter_node(ui_root, module_tree):
    fields = parameter_fields(module_tree)
    for parameter in ui_parameter_bindings(ui_root):
        assert parameter in fields, f"the .ui binds {parameter!r}, which SemiSupSegParameterNode lacks"


def test_bound_widgets_can_represent_their_fields(ui_root, ui_widgets, module_tree):
    """The checks parameterNodeWrapper makes at run time in Slicer, made here."""
    fields = parameter_fields(module_tree)
    for parameter, (widgetClass, widgetName) in ui_parameter_bindings(ui_root).items():
        field = fields[parameter]
        assert field["type"] in CONNECTABLE.get(widgetClass, set()), \
            f"{widgetName} ({widgetClass}) cannot show {parameter}: {field['type']}"
        if widgetClass in NEEDS_BOUNDS:
            assert "WithinRange" in field["validators"], f"{parameter} needs WithinRange for a {widgetClass}"
        if widgetClass in NEEDS_CHOICE:
            assert "Choice" in field["validators"], f"{parameter} needs Choice([...]) for a QComboBox"
            choices = field["validators"]["Choice"][0]
            assert combo_items(ui_widgets[widgetName]) == list(choices), f"{widgetName} items differ from Choice"
            assert field["default"] in choices


def test_folder_fields_are_bound_by_hand_and_not_named_for_connect_gui(ui_root, ui_widgets, module_tree):
    """The workspace and export folders are bound by PathField (issue 20, bug 6), so the .ui must not
    give them a SlicerParameterName: connectGui would bind them a second time (the widget used to
    clear the property at setup; now there is nothing to clear)."""
    path_fields = module_constants(module_tree)["PATH_FIELDS"]
    assert set(path_fields.values()) == {"workspaceDir", "exportDir"}
    for widget_name, parameter in path_fields.items():
        assert ui_widgets[widget_name].get("class") == "ctkPathLineEdit"
        assert ui_widgets[widget_name].find("property[@name='SlicerParameterName']") is None, widget_name
        assert parameter not in ui_parameter_bindings(ui_root)
    cleared = [node for node in ast.walk(module_tree) if isinstance(node, ast.Call)
               and isinstance(node.func, ast.Attribute) and node.func.attr == "setProperty"
               and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value == "SlicerParameterName"]
    assert not cleared, "the widget still sets SlicerParameterName at run time"


def test_the_device_choices_are_the_engines(ui_widgets):
    """``--device`` takes auto, cuda, mps (an Apple GPU) and cpu (semisupseg/training/devices.py)."""
    assert combo_items(ui_widgets["deviceComboBox"]) == ["auto", "cuda", "mps", "cpu"]


def test_defaults_lie_within_their_ranges(module_tree):
    for name, field in parameter_fields(module_tree).items():
        if "WithinRange" in field["validators"] and field["default"] is not None:
            low, high = field["validators"]["WithinRange"]
            assert low <= field["default"] <= high, name


def test_method_combobox_starts_with_the_default_list(ui_widgets, module_tree):
    constants = module_constants(ast.parse((LIB_DIR / "presenter.py").read_text(encoding="utf-8")))  # the presenter's list
    assert combo_items(ui_widgets["methodComboBox"]) == list(constants["DEFAULT_METHODS"])
    assert parameter_fields(module_tree)["method"]["default"] in constants["DEFAULT_METHODS"]


def test_every_ui_widget_the_code_uses_exists(ui_widgets, module_tree):
    used = set()
    for node in ast.walk(module_tree):
        # self.ui.<name> and widget.ui.<name>
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui":
            used.add(node.attr)
    assert used, "no self.ui.<widget> found: did the parsing break?"
    missing = sorted(used - set(ui_widgets))
    assert not missing, f"SemiSupSeg.py uses widgets the .ui lacks: {missing}"


def test_module_compiles(tmp_path):
    py_compile.compile(str(MODULE_FILE), cfile=str(tmp_path / "SemiSupSeg.pyc"), doraise=True)


# -- SemiSupSeg.py against the Slicer logic ----------------------------------------------


def _defined_names(path: Path) -> set[str]:
    """Top-level names of a Python file: functions, classes, assignments, imports."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return names


def _class_members(path: Path, className: str) -> set[str]:
    """Methods, properties and self.<attribute> assignments of a class."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    cls = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == className)
    members = set()
    for node in ast.walk(cls):
        if isinstance(node, ast.FunctionDef):
            members.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            members |= {t.attr for t in targets if isinstance(t, ast.Attribute) and ast.unparse(t.value) == "self"}
    return members


def _attributes_used_on(tree: ast.Module, receivers: set[str]) -> set[str]:
    return {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and ast.unparse(node.value) in receivers}


requires_lib = pytest.mark.skipif(not (LIB_DIR / "__init__.py").exists() or not (LIB_DIR / "logic.py").exists(),
                                  reason="SemiSupSegLib is not written yet")


@requires_lib
def test_imports_from_the_logic_package_exist(module_tree):
    exported = _defined_names(LIB_DIR / "__init__.py")
    submodules = {path.stem for path in LIB_DIR.glob("*.py")}
    for node in module_tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "SemiSupSegLib":
            for alias in node.names:
                assert alias.name in exported | submodules, f"SemiSupSegLib has no {alias.name}"


def gui_layer_trees(module_tree) -> list:
    """SemiSupSeg.py and the Qt-free parts it delegates to: the presenter (and its two mixins) and the in-Slicer checks."""
    return [module_tree] + [ast.parse((LIB_DIR / name).read_text(encoding="utf-8"))
                            for name in ("presenter.py", "training_control.py", "review_control.py", "in_slicer_checks.py")
                            if (LIB_DIR / name).exists()]


@requires_lib
def test_logic_methods_called_by_the_gui_exist(module_tree):
    members = _class_members(LIB_DIR / "logic.py", "SemiSupSegLogic")
    called = set().union(*(_attributes_used_on(tree, {"self.logic", "logic"}) for tree in gui_layer_trees(module_tree)))
    missing = sorted(called - members)
    assert not missing, f"SemiSupSeg.py calls SemiSupSegLogic.{missing}, which the logic lacks"
    assert {"writeWorkspace", "startTraining", "loadResults", "regions", "jumpToRegion", "caseScores",
            "acceptPrediction", "exportSegmentations", "engineStatus", "installDependencies"} <= called


@requires_lib
def test_training_job_attributes_used_by_the_gui_exist(module_tree):
    members = _class_members(LIB_DIR / "training_job.py", "TrainingJob")
    used = set().union(*(_attributes_used_on(tree, {"job", "self._job", "self.job"}) for tree in gui_layer_trees(module_tree)))
    missing = sorted(used - members)
    assert not missing, f"SemiSupSeg.py uses TrainingJob.{missing}, which TrainingJob lacks"


@requires_lib
def test_case_node_helpers_used_by_the_gui_exist(module_tree):
    defined = _defined_names(LIB_DIR / "case_nodes.py")
    used = set().union(*(_attributes_used_on(tree, {"case_nodes"}) for tree in gui_layer_trees(module_tree)))
    missing = sorted(used - defined)
    assert not missing, f"SemiSupSeg.py uses case_nodes.{missing}, which SemiSupSegLib/case_nodes.py lacks"


def test_the_widget_stays_humble(module_tree):
    """Issue 20: decisions live in SemiSupSegLib/presenter.py (tested headless); the GUI file only binds Qt.
    SemiSupSeg.py at most 600 lines, its widget class at most 300."""
    lines = MODULE_FILE.read_text(encoding="utf-8").splitlines()
    widget = next(node for node in module_tree.body if isinstance(node, ast.ClassDef) and node.name == "SemiSupSegWidget")
    assert len(lines) <= 600, len(lines)
    assert widget.end_lineno - widget.lineno + 1 <= 300, widget.end_lineno - widget.lineno + 1
