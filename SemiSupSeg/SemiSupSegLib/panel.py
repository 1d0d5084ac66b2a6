"""Qt-free decisions of the module panel that Slicer's own GUI helpers get wrong (issue 20, section 1).

Each class here holds one decision the widget used to make inline, so that it can be tested
headless; the widget (``SemiSupSeg.py``) only connects Qt signals to these calls.

- ``ParameterNodeGuiBinding``: one parameter-node wrapper and one ``connectGui`` per parameter
  node (Slicer 5.8 returns no tag from ``connectGui``, so a wrapper made at every module enter left
  its connectors live and reset the Device and Export format combo boxes).
- ``PathField``: a folder field bound by hand, writing only real changes both ways.
- ``patchSizeProblem``: the engine's patch rule, without importing torch into Slicer.
- ``CaseDisplay``: which case the slice views show and how (Show uncertainty, Opacity), also after
  "Next uncertain region", and when the views must be refitted.
"""

from __future__ import annotations

import math
import pathlib
from typing import Callable, Optional, Sequence

# Nothing of this package or of Slicer is imported here: the module loads anywhere (the GUI-file
# tests load it next to stand-ins for qt and slicer).

# The network the panel trains (the engine's default, semisupseg.config.DEFAULTS["network"]) and
# its patch rule (semisupseg.networks.patch_rule("unet3d", network_options)). Copied as numbers and
# a few lines because importing the engine's networks imports torch; a test checks that both agree.
# Isotropic data: every axis a positive multiple of 16 (four halvings) and at least 2 voxels in the
# instance-normalised 1/16 bottleneck, so 16^3 is refused. Thin slabs (issue 19): the engine plans
# the pooling from the median spacing (networks/anisotropy.py) and a thick-slice axis is pooled
# fewer times, so ACDC (1.5, 1.5, 5 mm) takes multiples of 16, 16 and 8 (e.g. 144 x 144 x 8).
PANEL_NETWORK = "unet3d"
PATCH_DIVISOR = 16
PATCH_MIN_BOTTLENECK_VOXELS = 2
PANEL_POOLINGS = 4  # the U-Net's poolings (anisotropy.LEVELS)
FINE_SPACING_RATIO = 2.0  # an axis up to twice the finest spacing is pooled (anisotropy.FINE_RATIO)
EMBEDDING_STRIDE = 8  # FeCL's block grid: every axis a multiple of 8 at least (unet3d.size_divisors)
# "Segment slice by slice" trains the 2D network (slice_unet.SliceUNet): x and y halved four times,
# z only a multiple of FeCL's grid, and each slice's bottleneck normalised on its own (stride 0: z
# does not count), whatever the spacing.
PANEL_SLICE_NETWORK = "unet2d"
SLICE_DIVISORS = (PATCH_DIVISOR, PATCH_DIVISOR, EMBEDDING_STRIDE)
SLICE_STRIDES = (PATCH_DIVISOR, PATCH_DIVISOR, 0)


def medianSpacing(spacings: Sequence[Sequence[float]]) -> Optional[tuple]:
    """Per-axis median (x, y, z) of the cases' voxel spacings (what the engine plans from); None for none."""
    valid = [tuple(float(v) for v in s) for s in spacings if s is not None and len(s) == 3 and all(v > 0 for v in s)]
    if not valid:
        return None
    return tuple(_median([s[axis] for s in valid]) for axis in range(3))


def _median(values: list) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def patchAxisRule(spacing: Optional[Sequence[float]] = None, sliceBySlice: bool = False) -> tuple:
    """``(divisors, strides)`` per axis (x, y, z) of the panel's network for data of this spacing.

    ``sliceBySlice``: the 2D network's rule (``SLICE_DIVISORS``, ``SLICE_STRIDES``), which the
    spacing does not change.

    The engine's plan, stage by stage with the stage's spacing ``s``: axis ``a`` is pooled (x2)
    when ``s_a <= 2 * min(s)``, then ``s_a`` grows by its pool. ``strides_a = prod(pools_a)``
    (input voxels per bottleneck voxel), ``divisors_a = max(strides_a, 8)``. None or isotropic
    spacing: (16, 16, 16) both.
    """
    if sliceBySlice:
        return SLICE_DIVISORS, SLICE_STRIDES
    if not spacing:
        return (PATCH_DIVISOR,) * 3, (PATCH_DIVISOR,) * 3
    current = [float(v) for v in spacing]
    strides = [1, 1, 1]
    for _stage in range(PANEL_POOLINGS):
        finest = min(current)
        pools = [2 if v <= FINE_SPACING_RATIO * finest * (1 + 1e-6) else 1 for v in current]
        strides = [t * p for t, p in zip(strides, pools)]
        current = [v * p for v, p in zip(current, pools)]
    divisors = tuple(max(t, EMBEDDING_STRIDE) for t in strides)
    return divisors, tuple(strides)


def patchSizeProblem(patch: Sequence[int], divisor: int = PATCH_DIVISOR,
                     minBottleneckVoxels: int = PATCH_MIN_BOTTLENECK_VOXELS,
                     spacing: Optional[Sequence[float]] = None, sliceBySlice: bool = False) -> Optional[str]:
    """None when the patch is automatic (all 0) or one the engine's network accepts, else the fix.

    ``spacing``: the cases' median (x, y, z) mm (``medianSpacing``); None uses ``divisor`` on every
    axis. ``sliceBySlice``: check for the 2D network the panel then sends (``patchAxisRule``).
    Accepted: positive multiples of the per-axis divisors with
    ``prod(p_a // stride_a) >= minBottleneckVoxels`` over the axes whose stride is not 0 (the
    engine's ``PatchRule.problem``), e.g. 32 x 16 x 16 but not 16 x 16 x 16; for 1.5 x 1.5 x 5 mm
    slabs 144 x 144 x 8; slice by slice 32 x 16 x 8 but not 16 x 16 x 64.
    """
    values = [int(p) for p in patch]
    if not any(values):
        return None
    if sliceBySlice or spacing:
        divisors, strides = patchAxisRule(spacing, sliceBySlice)
    else:
        divisors, strides = (divisor,) * 3, (divisor,) * 3
    if len(values) != 3 or any(v <= 0 or v % d for v, d in zip(values, divisors)):
        if len(set(divisors)) == 1:
            return f"Patch size {tuple(values)}: set all three to multiples of {divisors[0]}, or all to auto."
        return (f"Patch size {tuple(values)}: set x, y, z to multiples of {divisors[0]}, {divisors[1]}, {divisors[2]} "
                "(the network pools the thick-slice axis of these scans fewer times), or all to auto.")
    if math.prod(v // s for v, s in zip(values, strides) if s) < minBottleneckVoxels:
        return _bottleneckProblem(values, divisors, strides, minBottleneckVoxels)
    return None


def _bottleneckProblem(values: list, divisors: tuple, strides: tuple, minBottleneckVoxels: int) -> str:
    if 0 in strides:  # slice by slice: only the in-plane size counts
        example = f"{2 * divisors[0]} x {divisors[1]} x {divisors[2]}"
        return (f"Patch size {tuple(values)} is too small for the slice-by-slice network: each slice's bottleneck "
                f"(1/{strides[0]} x 1/{strides[1]} of x and y) needs at least {minBottleneckVoxels} voxels, and more "
                f"slices do not help. Make x or y larger (e.g. {example}), or set all to auto.")
    if len(set(strides)) == 1:
        example = f"{2 * divisors[0]} x {divisors[1]} x {divisors[2]}"
    else:  # grow the thick-slice axis, which the bottleneck shrinks least
        example = " x ".join(str(2 * d if s == min(strides) else d) for d, s in zip(divisors, strides))
    return (f"Patch size {tuple(values)} is too small for the network: its bottleneck "
            f"({' x '.join(f'1/{s}' for s in strides) if len(set(strides)) > 1 else f'1/{strides[0]}'} of the patch) "
            f"needs at least {minBottleneckVoxels} voxels. Make one side larger (e.g. {example}), or set all to auto.")


class ParameterNodeGuiBinding:
    """Keeps exactly one wrapper and one GUI connection per parameter node.

    ``wrap(mrmlNode)`` makes the typed wrapper (``SemiSupSegParameterNode(node)``); ``gui`` is what
    ``connectGui`` binds (the widget's ``ui``). ``bind`` on the node already bound returns the same
    wrapper and connects nothing: a second ``connectGui`` would build new connectors, and a combo
    box connector's constructor calls ``clear()``, whose ``currentIndexChanged(-1)`` reaches any
    connector still live and writes ``choices[-1]`` (Slicer 5.8, parameterNodeWrapper/guiConnectors.py,
    QComboBoxToStringableConnector). Slicer 5.8's ``connectGui`` returns no tag (wrapper.py,
    ``_connectGui`` drops the tag of ``_connectParametersToGui``; 5.10 returns it), so the tag is
    recovered as ``_nextParameterGUIsTag - 1`` and ``disconnectGui`` really disconnects.
    """

    def __init__(self, wrap: Callable, gui):
        self._wrap = wrap
        self._gui = gui
        self.node = None
        self.wrapper = None
        self.tag = None
        self.newlyBound = False  # True when the last bind made the wrapper (its defaults may need filling)

    def bind(self, mrmlNode):
        """The wrapper of ``mrmlNode``, connected to the GUI once; None unbinds. Returns the wrapper."""
        self.newlyBound = False
        if mrmlNode is not None and mrmlNode is self.node:
            return self.wrapper
        self.release()
        if mrmlNode is None:
            return None
        wrapper = self._wrap(mrmlNode)
        tag = wrapper.connectGui(self._gui)
        if tag is None:  # Slicer <= 5.8: connectGui does not return the tag it made
            tag = getattr(wrapper, "_nextParameterGUIsTag", 1) - 1
        self.node, self.wrapper, self.tag, self.newlyBound = mrmlNode, wrapper, tag, True
        return wrapper

    def release(self) -> None:
        """Disconnect the GUI from the bound wrapper (scene close, module cleanup)."""
        if self.wrapper is not None:
            self.wrapper.disconnectGui(self.tag)
        self.node = self.wrapper = self.tag = None


def pathFromText(text, pathClass=pathlib.Path):
    """The folder a path field's text names, or None for an empty field (pathlib would read "" as ".")."""
    text = "" if text is None else str(text).strip()
    return pathClass(text) if text else None


def isUnsetPath(path) -> bool:
    """True for no path and for the empty path a fresh parameter node holds ("" becomes ".")."""
    return path is None or str(path) in ("", ".")


def sameFolder(first, second, pathClass=pathlib.Path) -> bool:
    """Whether two paths (str or Path, None = unset) name the same folder as typed: separators
    (``/`` vs ``\\`` on Windows) and a trailing separator do not count."""
    if isUnsetPath(first) or isUnsetPath(second):
        return isUnsetPath(first) and isUnsetPath(second)
    return pathClass(str(first)) == pathClass(str(second))


class PathField:
    """A folder field (ctkPathLineEdit) bound to a ``pathlib.Path`` parameter by hand.

    Slicer's ctkPathLineEdit <-> pathlib.Path connector writes the node at every keystroke and the
    node writes the text back, so the cursor jumps to the end, Windows turns ``/`` into ``\\`` while
    typing, and clearing the field is undone (issue 20, bug 6). Here both directions write only a
    real change: ``onTextChanged`` stores the typed folder only when it differs from the stored one,
    and ``textToShow`` returns None (leave the widget alone) when the text already names the stored
    folder. ``read()``/``write(path)`` access the parameter; an empty field stores ``Path("")``
    (unset, see ``isUnsetPath``).
    """

    def __init__(self, read: Callable[[], object], write: Callable[[object], None], pathClass=pathlib.Path):
        self._read = read
        self._write = write
        self._pathClass = pathClass

    def onTextChanged(self, text) -> bool:
        """The user typed or browsed; returns True when the parameter was written."""
        typed = pathFromText(text, self._pathClass)
        if sameFolder(typed, self._read(), self._pathClass):
            return False
        self._write(typed if typed is not None else pathlib.Path(""))
        return True

    def textToShow(self, currentText) -> Optional[str]:
        """The text the widget must show for the stored folder, or None when it already does."""
        stored = self._read()
        if sameFolder(pathFromText(currentText, self._pathClass), stored, self._pathClass):
            return None
        return "" if isUnsetPath(stored) else str(stored)


class CaseDisplay:
    """What the slice views show: one case's volume with its uncertainty overlay as the panel says.

    Every change goes through ``logic.showCase(caseId, showUncertainty, opacity)`` (ResultsLoader),
    so the overlay, its opacity and the prediction's outline-or-fill always agree with the panel,
    also after "Next/Previous uncertain region" (which used to re-show the map at 0.4). ``fitViews``
    (the widget passes ``slicer.util.resetSliceViews``) runs when another case comes on screen:
    the new volume may lie elsewhere or be larger than the old one. ``opacity`` None means the
    logic's default (0.4).
    """

    def __init__(self, logic, fitViews: Callable[[], None] = lambda: None):
        self.logic = logic
        self.fitViews = fitViews
        self.caseId = None  # the case on screen, as far as this panel put it there
        self.state = None  # (caseId, showUncertainty, opacity) last applied

    @staticmethod
    def _state(caseId, showUncertainty, opacity) -> tuple:
        return (caseId, bool(showUncertainty), None if opacity is None else round(float(opacity), 3))

    def show(self, caseId: str, showUncertainty: bool, opacity: Optional[float], fit: Optional[bool] = None) -> bool:
        """Show ``caseId``; returns True when it is another case than before. The views are refitted
        then (``fit`` None) or as ``fit`` says."""
        switched = caseId != self.caseId
        self.logic.showCase(caseId, bool(showUncertainty), opacity)
        self.caseId, self.state = caseId, self._state(caseId, showUncertainty, opacity)
        if switched if fit is None else fit:
            self.fitViews()
        return switched

    def follow(self, showUncertainty: bool, opacity: Optional[float]) -> bool:
        """Apply changed panel settings to the case on screen; False when nothing changed or none is shown."""
        if self.caseId is None or self.state == self._state(self.caseId, showUncertainty, opacity):
            return False
        self.show(self.caseId, showUncertainty, opacity, fit=False)
        return True

    def reapply(self, showUncertainty: bool, opacity: Optional[float], caseId: Optional[str] = None) -> bool:
        """Put back the case that was on screen (or ``caseId``) after something else changed the views
        (loading results shows the first loaded case); no refit: the annotator keeps the zoom."""
        caseId = self.caseId or caseId
        if caseId is None:
            return False
        self.show(caseId, showUncertainty, opacity, fit=False)
        return True

    def jumpToRegion(self, region: dict, showUncertainty: bool, opacity: Optional[float]) -> None:
        """Show the region's case as the panel says (refitting first when it is another case), then
        centre every view on the region."""
        caseId = region.get("case")
        if caseId and caseId != self.caseId:
            self.show(caseId, showUncertainty, opacity)
        self.logic.jumpToRegion(region, bool(showUncertainty), opacity)
        if caseId:
            self.caseId, self.state = caseId, self._state(caseId, showUncertainty, opacity)

    def forget(self) -> None:
        """The views were changed elsewhere (scene closed, a volume without a case shown)."""
        self.caseId = self.state = None
