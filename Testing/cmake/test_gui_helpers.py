"""SemiSupSeg.py's plain helpers (texts, checks, the run config it asks the engine for), imported with
the stand-ins of gui_module.py for qt / vtk / slicer."""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from gui_module import LIB_DIR, MODULE_DIR, load_gui, module_constants, panel_text_module


@pytest.fixture(scope="module")
def gui():
    return load_gui()


def test_format_duration(gui):
    assert gui.formatDuration(42) == "42 s"
    assert gui.formatDuration(754) == "13 min"
    assert gui.formatDuration(5400) == "1 h 30 min"
    assert gui.formatDuration(3 * 3600 + 5 * 60) == "3 h 05 min"
    for unknown in (None, -1, float("nan"), float("inf")):
        assert gui.formatDuration(unknown) == ""


def test_progress_text(gui):
    text = gui.progressText({"iteration": 120, "total": 2000, "it_per_s": 3.2, "eta_s": 594,
                             "losses": {"total": 0.41234, "uncl": 0.08}})
    assert text == "Iteration 120 / 2000 · 3.20 it/s · about 10 min left\nLosses: total 0.412, uncl 0.08"
    assert gui.progressText({"iteration": 1, "total": 4}) == "Iteration 1 / 4"


def test_progress_and_end_texts_of_a_run_with_a_time_budget(gui):
    budget_only = {"iteration": 40, "total": 0, "it_per_s": 2.0, "eta_s": 600, "budget_left_s": 600}
    assert gui.progressText(budget_only) == "Iteration 40, training until the time budget · 2.00 it/s · time budget: 10 min left"
    with_iterations = {"iteration": 40, "total": 300, "eta_s": 130, "budget_left_s": 600}
    assert gui.progressText(with_iterations) == "Iteration 40 / 300 · about 2 min left · time budget: 10 min left"
    assert gui.progressText({"iteration": 7, "total": 0, "budget_left_s": -3.0}).endswith("time budget: 0 s left")
    assert gui.progressText({"iteration": 7, "total": 0}) == "Iteration 7, training until stopped"
    panel_text = panel_text_module()
    ended = panel_text.finishedText("r1", {"event": "finished", "stopped_by": "time_budget", "time_budget_s": 1200,
                                           "budget_used_s": 1130.4})
    assert ended.startswith("Finished run r1: stopped at its time budget (19 min of 20 min, prediction included).")
    assert panel_text.finishedText("r1", {"stopped_by": "iterations"}).startswith("Finished run r1. Select a case")
    assert panel_text.finishedText("r1", None).startswith("Finished run r1. Select a case")


def test_region_text(gui):
    regions = [{"rank": 1, "volume_ml": 3.0, "mean_uncertainty": 0.9},
               {"rank": 2, "volume_ml": 1.349, "mean_uncertainty": 0.618}]
    assert gui.regionText(1, regions) == "Region 2 of 2: 1.35 ml, mean uncertainty 0.62"
    assert gui.regionText(0, [{"rank": 1}]) == "Region 1 of 1"
    assert "2 uncertain regions" in gui.regionText(-1, regions)
    assert gui.regionText(0, []) == "No uncertain regions for this case."


def test_class_names_from_segments(gui):
    names, problems = gui.classNamesFromSegments({"a": ["Atrium", "Scar"], "b": ["scar", "atrium", "Background"]})
    assert names == ["Atrium", "Scar"] and problems == []
    names, problems = gui.classNamesFromSegments({"a": ["atrium"], "b": ["atrium", "scar"]})
    assert names == ["atrium"] and len(problems) == 1
    assert "b has segments [atrium, scar] but a has [atrium]" in problems[0]
    assert gui.classNamesFromSegments({"a": ["x", "X"]})[1] == ["a: two segments have the same name; rename one."]
    assert gui.classNamesFromSegments({}) == ([], [])


def test_validate_training_inputs(gui):
    Case = gui.CaseSummary
    good = [Case("a", True, True, ["atrium"]), Case("b", False, False)]
    assert gui.validateTrainingInputs(Path("/data/ws"), good) == []

    problems = gui.validateTrainingInputs(Path(""), [])
    assert len(problems) == 2 and "workspace folder" in problems[0] and "Add volumes" in problems[1]

    problems = gui.validateTrainingInputs(Path("/w"), [Case("a", True, False), Case("b", False, True, ["x"])])
    assert any("a is marked labelled but has no segmentation" in p for p in problems)
    assert any("Mark at least one case" in p for p in problems)

    problems = gui.validateTrainingInputs(Path("/w"), [Case("a", True, True, ["background"])])
    assert any("has no segments" in p for p in problems)

    problems = gui.validateTrainingInputs(Path("/w"), [Case("a", True, True, ["x"]), Case("b", True, True, ["y"])])
    assert problems == ["b has segments [y] but a has [x]: use the same segment names in every labelled case."]

    assert gui.validateTrainingInputs(Path("/w"), [Case("a", True, True, ["x"], hasImage=False)]) == ["a has no image data."]
    assert gui.validateTrainingInputs(Path("/w"), good, patch=(64, 64, 40))[0].startswith("Patch size (64, 64, 40)")


def test_patch_size_problem(gui):
    assert gui.patchSizeProblem((0, 0, 0)) is None
    assert gui.patchSizeProblem((96, 96, 64)) is None
    assert gui.patchSizeProblem((96, 0, 64)) is not None  # all or none
    assert gui.patchSizeProblem((96, 96, 40)) is not None  # multiples of 16
    assert gui.patchSizeProblem((16, 16, 16)) is not None  # the engine's bottleneck rule (test_widget_bugs compares all)
    assert gui.patchSizeProblem((32, 16, 16)) is None


def parameters(**changes):
    values = dict(method="dycon", device="auto", seed=1337, iterations=0, batchLabelled=0, batchUnlabelled=-1,
                  predictEvery=0, patchX=0, patchY=0, patchZ=0)
    values.update(changes)
    return SimpleNamespace(**values)


def test_training_config_leaves_automatic_values_to_the_engine(gui):
    assert gui.trainingConfig(parameters()) == {"method": "dycon", "device": "auto", "seed": 1337}
    config = gui.trainingConfig(parameters(method="mean_teacher", device="cpu", seed=3, iterations=500, batchLabelled=2,
                                           batchUnlabelled=0, predictEvery=100, patchX=64, patchY=64, patchZ=32))
    assert config == {"method": "mean_teacher", "device": "cpu", "seed": 3, "iterations": 500, "batch_labelled": 2,
                      "batch_unlabelled": 0, "predict_every": 100, "patch_size": [64, 64, 32]}


def test_keep_training_asks_the_engine_for_a_continuous_run(gui):
    config = gui.trainingConfig(parameters(iterations=500, keepTraining=True))
    assert config["iterations"] == 0  # the engine's "until stopped"
    assert gui.trainingConfig(parameters(iterations=500, keepTraining=False))["iterations"] == 500


def test_a_time_budget_goes_into_the_run_config_in_minutes(gui):
    assert "time_budget_min" not in gui.trainingConfig(parameters(timeBudgetMin=0))  # 0 = none
    assert gui.trainingConfig(parameters(timeBudgetMin=20))["time_budget_min"] == 20
    assert gui.trainingConfig(parameters(timeBudgetMin=0.5))["time_budget_min"] == 0.5


def test_largest_structure_only_asks_the_engine_to_postprocess(gui):
    assert "postprocess" not in gui.trainingConfig(parameters(largestStructureOnly=False))  # engine default: off
    assert gui.trainingConfig(parameters(largestStructureOnly=True))["postprocess"] == "largest_foreground"


def test_average_flips_asks_the_engine_for_flip_averaged_predictions(gui):
    assert "tta" not in gui.trainingConfig(parameters(averageFlips=False))  # engine default: off
    assert gui.trainingConfig(parameters(averageFlips=True))["tta"] == "flips"


def test_slice_by_slice_asks_the_engine_for_the_2d_network(gui):
    assert "network" not in gui.trainingConfig(parameters(sliceBySlice=False))  # engine default: unet3d
    assert gui.trainingConfig(parameters(sliceBySlice=True))["network"] == "unet2d"


def test_training_config_keys_are_engine_config_keys(gui):
    config_module = MODULE_DIR / "semisupseg" / "config.py"
    if not config_module.exists():
        pytest.skip("the engine's config.py is not written yet")
    sys.path.insert(0, str(MODULE_DIR))
    try:
        from semisupseg.config import DEFAULTS
    finally:
        sys.path.remove(str(MODULE_DIR))
    config = gui.trainingConfig(parameters(iterations=1, batchLabelled=1, batchUnlabelled=1, predictEvery=1,
                                           patchX=16, patchY=16, patchZ=16, timeBudgetMin=5,
                                           largestStructureOnly=True, averageFlips=True, sliceBySlice=True))
    assert set(config) <= set(DEFAULTS), f"keys the engine does not know: {set(config) - set(DEFAULTS)}"


def registered_engine_methods() -> set[str]:
    """Method names in the engine's registry, read from the source (importing it would import torch):
    METHODS in semisupseg/methods/__init__.py is keyed by ``<Class>.name``, and each class sets ``name = "..."``."""
    methods_dir = MODULE_DIR / "semisupseg" / "methods"
    registry = ast.parse((methods_dir / "__init__.py").read_text(encoding="utf-8"))
    registered = {node.value.id for node in ast.walk(registry)
                  if isinstance(node, ast.Attribute) and node.attr == "name" and isinstance(node.value, ast.Name)}
    names = {}
    for path in methods_dir.glob("*.py"):
        for cls in ast.parse(path.read_text(encoding="utf-8")).body:
            if not isinstance(cls, ast.ClassDef):
                continue
            for statement in cls.body:
                if (isinstance(statement, ast.Assign) and [ast.unparse(t) for t in statement.targets] == ["name"]
                        and isinstance(statement.value, ast.Constant)):
                    names[cls.name] = statement.value.value
    assert registered and registered <= set(names), f"cannot read the method registry: {registered} vs {names}"
    return {names[cls] for cls in registered}


def test_default_methods_are_the_engines(gui):
    if not (MODULE_DIR / "semisupseg" / "methods" / "__init__.py").exists():
        pytest.skip("the engine's method registry is not written yet")
    constants = module_constants(ast.parse((LIB_DIR / "presenter.py").read_text(encoding="utf-8")))
    assert set(constants["DEFAULT_METHODS"]) == registered_engine_methods()


def test_method_entries(gui):
    listing = {"dycon": {"description": "DyCON", "options": {}}, "supervised": {"description": "labelled only"}}
    assert gui.methodEntries(listing) == [("dycon", "DyCON"), ("supervised", "labelled only")]
    assert gui.methodEntries([{"name": "a", "description": "A"}, "b"]) == [("a", "A"), ("b", "")]
    assert gui.methodEntries(None) == []


def test_engine_status_text(gui):
    assert "not installed" in gui.engineStatusText({"torch": None, "cuda": False, "missing": ["monai"]})
    assert gui.engineStatusText({"torch": "2.5.1", "cuda": True, "device": "cuda:0 NVIDIA H100", "missing": []}) \
        == "PyTorch 2.5.1 · GPU: cuda:0 NVIDIA H100"
    cpu = gui.engineStatusText({"torch": "2.5.1", "cuda": False, "device": "cpu", "missing": ["tqdm"]})
    assert "CPU only" in cpu and "missing: tqdm" in cpu
    apple = gui.engineStatusText({"torch": "2.9.0", "cuda": False, "mps": True, "device": "mps Apple GPU (MPS)", "missing": []})
    assert apple == "PyTorch 2.9.0 · GPU: Apple GPU (MPS)" and "CPU only" not in apple
    assert "could not check" in gui.engineStatusText({"error": "boom"})
    assert gui.engineStatusText(None) == "PyTorch: not checked yet"


def test_is_path_set(gui):
    assert not gui.isPathSet(None)
    assert not gui.isPathSet(Path(""))
    assert not gui.isPathSet(Path("."))
    assert gui.isPathSet(Path("/data/workspace"))


def test_list_volume_files(gui, tmp_path):
    for name in ("b.nii.gz", "a.nrrd", "c.mha", "seg.seg.nrrd", "notes.txt", ".hidden.nrrd", "D.NII"):
        (tmp_path / name).write_text("", encoding="utf-8")
    (tmp_path / "sub.nrrd").mkdir()
    found = [Path(p).name for p in gui.listVolumeFiles(str(tmp_path))]
    assert found == ["D.NII", "a.nrrd", "b.nii.gz", "c.mha"]
