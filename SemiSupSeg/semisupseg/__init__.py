"""SemiSupSeg engine: semi-supervised 3D segmentation (DyCON and companions), Slicer-free.

The engine meets the Slicer module only through a workspace folder and the worker's
JSON-lines event stream (see docs/engine-api.md); it never imports slicer, qt or vtk.
"""

__version__ = "0.1.0"
