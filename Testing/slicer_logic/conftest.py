"""Headless set-up for the SemiSupSeg Slicer-logic tests (real MRML, no Qt).

These tests run the Qt-free logic in ``SemiSupSeg/SemiSupSegLib`` on real MRML nodes using the
``slicer-core`` wheel (``pip install slicer-core==5.13.31053.0 slicerio``), which ships Slicer's
compiled MRML, segmentation, volumes and colours logic and the unmodified ``slicer.util``, but no
Qt, CTK, ``slicer.app`` or scripted modules. Inside the Slicer application all of the following is
done by the application itself; here ``slicer_test_scenes.headlessScene()`` does it, through the ``mrml``
fixture once per test:

1. create a ``vtkMRMLScene`` and a ``vtkSlicerApplicationLogic`` on it, with the default colour
   tables (``AddDefaultColorNodes``);
2. register the Colors, Volumes, Segmentations and SubjectHierarchy module logics on the
   application logic. Registering the segmentations logic is what installs the segmentation
   converter rules; without it segments cannot even be created;
3. set ``slicer.mrmlScene`` (``slicer.util`` reads it) and a ``slicer.modules`` namespace with
   ``segmentations.logic()`` and ``volumes.logic()`` (``updateSegmentBinaryLabelmapFromArray``
   needs them);
4. add the Red/Yellow/Green slice nodes and slice composite nodes that the layout manager would
   create, so result display and "jump to region" have views to act on.

What cannot be tested here: the GUI (``SemiSupSeg.py``), file-based colour tables (Inferno,
ColdToHotRainbow: the logic falls back to its own heat table), ``slicer.util.loadVolume`` /
``saveNode`` (they need ``slicer.app``; the logic uses storage nodes directly) and DICOM export.

Every test module starts with ``pytest.importorskip("slicer")`` so that the whole folder is
skipped, with that reason, where slicer-core is not installed. Note that PyPI's unrelated
``slicer`` package (pulled in by ``shap``) shadows slicer-core; the fixture fails loudly then.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
MODULE_DIR = REPOSITORY / "SemiSupSeg"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))


@pytest.fixture
def mrml():
    """A fresh headless scene with the module logics registered; ``slicer`` globals restored afterwards."""
    from slicer_test_scenes import headlessScene

    with headlessScene() as environment:
        yield environment
