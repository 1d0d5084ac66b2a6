"""The demo's overview picture: per case, image / prediction outline / entropy heat map.

One row per shown slice, three panels: the image in grey; the image with the predicted outline of
every foreground class (solid, one colour per class) and the ground-truth outline (dashed, same
colours) when a truth file is given; the normalised entropy (inferno, fixed 0..1, colour bar).
Axial slices are chosen through the predicted foreground. Rendering uses matplotlib's ``Figure``
directly (Agg canvas), so no pyplot state or display is involved.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from .atomic import atomic_output
from .data.io import read_image, to_array
from .errors import InputError

PathLike = Union[str, Path]
OverviewCase = Tuple[str, PathLike, PathLike, PathLike, Optional[PathLike]]
CLASS_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45")


def render_overview(images: Sequence[OverviewCase], out_png: PathLike, slices_per_case: int = 1) -> Path:
    """Render ``(case_id, image, prediction, uncertainty, truth or None)`` files to ``out_png``.

    Each case contributes ``slices_per_case`` rows at axial (z) slices spread over its predicted
    foreground (its centre slice when 1; see ``_choose_slices``). Panels use the voxel spacing for their aspect.
    The PNG is written atomically. Returns ``Path(out_png)``.
    """
    from matplotlib.figure import Figure

    if not images:
        raise ValueError("render_overview needs at least one case.")
    rows = [row for case in images for row in _case_rows(case, max(1, int(slices_per_case)))]
    figure = Figure(figsize=(11.0, 3.4 * len(rows)), dpi=100, layout="constrained")
    axes = figure.subplots(len(rows), 3, squeeze=False)
    for row_axes, row in zip(axes, rows):
        _draw_row(figure, row_axes, row)
    return _save_atomic(figure, Path(out_png))


class _Row:
    """Everything one row shows: 2-D (x, y) slices and their labels."""

    def __init__(self, case_id, z, image, prediction, uncertainty, truth, aspect, num_slices):
        self.case_id, self.z, self.num_slices = case_id, z, num_slices
        self.image, self.prediction, self.uncertainty, self.truth = image, prediction, uncertainty, truth
        self.aspect = aspect


def _case_rows(case: OverviewCase, slices_per_case: int) -> List[_Row]:
    """Read one case's files and cut the rows' slices."""
    case_id, image_path, prediction_path, uncertainty_path, truth_path = case
    image_img = read_image(image_path)
    image = to_array(image_img).astype(np.float32)
    prediction = _read_matching(prediction_path, image.shape, case_id, "prediction")
    uncertainty = _read_matching(uncertainty_path, image.shape, case_id, "uncertainty").astype(np.float32)
    truth = _read_matching(truth_path, image.shape, case_id, "truth") if truth_path else None
    spacing = image_img.GetSpacing()
    aspect = spacing[1] / spacing[0]  # rows are y, columns x
    return [
        _Row(case_id, z, image[:, :, z], prediction[:, :, z], uncertainty[:, :, z],
             None if truth is None else truth[:, :, z], aspect, image.shape[2])
        for z in _choose_slices(prediction, truth, uncertainty, slices_per_case)
    ]


def _read_matching(path: PathLike, shape: Tuple[int, ...], case_id: str, what: str) -> np.ndarray:
    array = to_array(read_image(path))
    if array.shape != shape:
        raise InputError(
            f"Case '{case_id}': the {what} {path} has size {array.shape}, the image {shape}.",
            "Pass the files of the same case, written on the image's grid.",
        )
    return array


def _choose_slices(prediction, truth, uncertainty, count: int) -> List[int]:
    """``count`` z indices through the predicted foreground (else the truth's).

    Slices sit at the foreground's voxel quantiles along z, (k + 1/2) / count: one slice is the
    median (centre) slice, and every chosen slice contains foreground. Without any foreground
    the ``count`` slices with the highest summed uncertainty are shown.
    """
    for mask in (prediction > 0, None if truth is None else truth > 0):
        if mask is not None and mask.any():
            cumulative = np.cumsum(mask.sum(axis=(0, 1)))
            quantiles = (np.arange(count) + 0.5) / count * cumulative[-1]
            return [int(z) for z in np.searchsorted(cumulative, quantiles)]
    most_uncertain = np.argsort(-uncertainty.sum(axis=(0, 1)), kind="stable")[:count]
    return sorted(int(z) for z in most_uncertain)


def _draw_row(figure, axes, row: _Row) -> None:
    from matplotlib.lines import Line2D

    low, high = np.percentile(row.image, [1, 99.5])
    grey = dict(cmap="gray", vmin=low, vmax=max(high, low + 1e-6), origin="upper", aspect=row.aspect,
                interpolation="nearest")
    axes[0].imshow(row.image.T, **grey)
    axes[0].set_title(f"{row.case_id}  (z = {row.z} of {row.num_slices})")
    axes[1].imshow(row.image.T, **grey)
    handles = _draw_outlines(axes[1], row.prediction, "solid")
    if row.truth is not None:
        _draw_outlines(axes[1], row.truth, "dashed")
        handles.append(Line2D([], [], color="white", linestyle="dashed", label="ground truth"))
    axes[1].set_title(f"{row.case_id}: prediction" + (" (solid) vs truth (dashed)" if row.truth is not None else ""))
    if handles:
        axes[1].legend(handles=handles, loc="lower right", fontsize=7, framealpha=0.6)
    heat = axes[2].imshow(row.uncertainty.T, cmap="inferno", vmin=0.0, vmax=1.0, origin="upper",
                          aspect=row.aspect, interpolation="nearest")
    axes[2].set_title(f"{row.case_id}: entropy / ln C")
    figure.colorbar(heat, ax=axes[2], fraction=0.046, pad=0.02)
    for ax in axes:
        ax.set_axis_off()


def _draw_outlines(ax, labels: np.ndarray, linestyle: str) -> list:
    """Contour every foreground class of a 2-D (x, y) label slice; returns legend handles."""
    from matplotlib.lines import Line2D

    handles = []
    for value in np.unique(labels):
        if value == 0:
            continue
        colour = CLASS_COLOURS[(int(value) - 1) % len(CLASS_COLOURS)]
        # pad so that outlines touching the border are closed; shift back by one voxel
        mask = np.pad((labels == value).T.astype(np.float32), 1)
        ax.contour(np.arange(-1, mask.shape[1] - 1), np.arange(-1, mask.shape[0] - 1), mask,
                   levels=[0.5], colors=[colour], linestyles=linestyle, linewidths=1.2)
        if linestyle == "solid":
            handles.append(Line2D([], [], color=colour, label=f"class {int(value)}"))
    return handles


def _save_atomic(figure, path: Path) -> Path:
    """Save ``figure`` as PNG through a temporary file in the same folder, then ``os.replace``."""
    with atomic_output(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png")
    return path
