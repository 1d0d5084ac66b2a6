"""Slicer-side logic of SemiSupSeg, free of Qt so it runs headless (slicer-core) as well as in Slicer.

``from SemiSupSegLib import SemiSupSegLogic, TrainingJob``
"""

from .logic import SemiSupSegLogic
from .training_job import TrainingJob

__all__ = ["SemiSupSegLogic", "TrainingJob"]
