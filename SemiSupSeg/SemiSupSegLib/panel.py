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
# its patch rule (semisupseg.networks.patch_rule("unet3d")): every axis a positive multiple of 16
# (four halvings) and at least 2 voxels in the instance-normalised 1/16 bottleneck, so 16^3 is
# refused. Copied as numbers because importing the engine's networks imports torch; a test checks
# that both agree.
PANEL_NETWORK = "unet3d"
PATCH_DIVISOR = 16
PATCH_MIN_BOTTLENECK_VOXELS = 2


def patchSizeProblem(patch: Sequence[int], divisor: int = PATCH_DIVISOR,
                     minBottleneckVoxels: int = PATCH_MIN_BOTTLENECK_VOXELS) -> Optional[str]:
    """None when the patch is automatic (all 0) or one the engine's network accepts, else the fix.

    Accepted: three positive multiples of ``divisor`` with ``prod(p // divisor) >= minBottleneckVoxels``
    (the engine's ``PatchRule.problem``), e.g. 32 x 16 x 16 but not 16 x 16 x 16.
    """
    values = [int(p) for p in patch]
    if not any(values):
        return None
    if len(values) != 3 or any(v <= 0 or v % divisor for v in values):
        return (f"Patch size {tuple(values)}: set all three to multiples of {divisor}, or all to auto.")
    if math.prod(v // divisor for v in values) < minBottleneckVoxels:
        return (f"Patch size {tuple(values)} is too small for the network: its bottleneck (1/{divisor} of the patch) "
                f"needs at least {minBottleneckVoxels} voxels. Make one side {2 * divisor} (e.g. "
                f"{2 * divisor} x {divisor} x {divisor}), or set all to auto.")
    return None


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
