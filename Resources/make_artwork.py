"""Render the extension's pictures: the icons and the annotation-loop diagram.

    python Resources/make_artwork.py

writes (all deterministic, from numpy + matplotlib only):
  Resources/SemiSupSeg.png                     extension icon, 128x128 (EXTENSION_ICONURL)
  SemiSupSeg/Resources/Icons/SemiSupSeg.png    module icon, 128x128 (shown in the module list)
  Resources/Screenshots/SemiSupSeg-loop.png    diagram of the loop (EXTENSION_SCREENSHOTURLS);
                                               a drawing, not a screen capture of Slicer: replace it
                                               with a real screenshot once the module runs in Slicer.

The motif: a shaded 3D blob (the segmented structure) with a heat overlay on part of its
boundary (where the voxel entropy is high), i.e. what the module shows in the slice views.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
ICON_SIZE = 128


BLOB_CENTRES = np.array([[-0.22, 0.05], [0.25, 0.18], [0.05, -0.28], [0.30, -0.20]])
BLOB_WIDTHS = np.array([0.30, 0.25, 0.24, 0.19])


def blob_field(x: np.ndarray, y: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Smooth scalar field (a sum of Gaussians, "metaballs"); the blob is where it exceeds 0.5.

    A sum of Gaussians has no kink anywhere, so its shading has no artefacts (a radius given as a
    function of the polar angle does: it is undefined at the centre).
    """
    field = np.zeros_like(x)
    for (cx, cy), width in zip(BLOB_CENTRES * scale, BLOB_WIDTHS * scale):
        field += np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2.0 * width**2))
    return field


def boundary_uncertainty(field: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Heat in [0, 1]: a band along the outline (field = 0.5), strong on two arcs only.

    Uncertainty concentrates near the predicted boundary (that is where the network hesitates),
    and only some stretches of it are uncertain: those are the "regions" the module jumps to.
    """
    band = np.exp(-(((field - 0.62) / 0.12) ** 2))
    theta = np.arctan2(y, x)
    arcs = np.clip(np.sin(2.0 * theta - 0.6), 0.0, 1.0) ** 1.5
    return band * arcs


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    coords = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    x, y = np.meshgrid(coords, -coords)  # y up
    return x, y


def render_icon(size: int = ICON_SIZE) -> np.ndarray:
    """RGBA float image (size, size, 4): Lambert-shaded blob plus an inferno heat overlay."""
    x, y = _grid(size)
    field = blob_field(x, y, scale=1.15)
    inside = field > 0.5

    # Height of a dome over the outline; its gradient gives the surface normal for shading.
    height = np.sqrt(np.clip(field - 0.5, 0.0, None))
    dy, dx = np.gradient(height)
    normal = np.stack([-dx * size / 2.0, dy * size / 2.0, np.ones_like(height)], axis=-1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    light = np.array([-0.5, 0.6, 0.75])
    light /= np.linalg.norm(light)
    lambert = np.clip(normal @ light, 0.0, 1.0)
    shade = 0.3 + 0.7 * lambert + 0.25 * lambert**12  # diffuse plus a small highlight

    base = np.array([0.55, 0.68, 0.82])  # cool grey-blue: the "image"
    rgb = np.clip(shade[..., None] * base[None, None, :], 0.0, 1.0)

    heat = boundary_uncertainty(field, x, y) * (field > 0.38)
    heat_rgb = colormaps["inferno"](0.45 + 0.5 * heat)[..., :3]
    alpha_heat = np.clip(1.8 * heat, 0.0, 0.95)[..., None]
    rgb = (1.0 - alpha_heat) * rgb + alpha_heat * heat_rgb

    # Soft anti-aliased edge, a little outside the blob so the heat band on the outline shows.
    outline = np.clip((field - 0.38) / 0.04, 0.0, 1.0)
    alpha = np.maximum(outline * inside, outline * np.clip(1.8 * heat[..., None], 0, 1)[..., 0])
    alpha = np.maximum(alpha, inside.astype(float))
    return np.concatenate([rgb, alpha[..., None]], axis=-1)


def save_icon(path: Path, size: int = ICON_SIZE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(path, render_icon(size))


def synthetic_slice(size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A noisy MR-like slice, the predicted mask and its entropy map (all (size, size))."""
    rng = np.random.default_rng(seed)
    x, y = _grid(size)
    field = blob_field(x, y, scale=1.1)
    mask = field > 0.5
    image = 0.35 + 0.4 * mask + 0.12 * np.exp(-((x + 0.6) ** 2 + (y - 0.6) ** 2) / 0.05)
    image += 0.06 * rng.standard_normal((size, size))
    entropy = boundary_uncertainty(field, x, y)
    return image, mask, entropy


def save_loop_diagram(path: Path) -> None:
    """Two panels: an example slice with the overlay, and the five steps of the loop."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = plt.figure(figsize=(12.8, 7.2), dpi=100, facecolor="#1e1f24")
    fig.suptitle("SemiSupSeg: label a few, train, review the uncertain regions, correct, export",
                 color="white", fontsize=17, y=0.96)

    ax_img = fig.add_axes([0.03, 0.06, 0.44, 0.8])
    image, mask, entropy = synthetic_slice()
    ax_img.imshow(image, cmap="gray", vmin=0.0, vmax=1.1)
    shown = np.ma.masked_less(entropy, 0.1)  # confident voxels stay transparent, as in Slicer
    ax_img.imshow(shown, cmap="inferno", vmin=0.0, vmax=1.0, alpha=0.6)
    ax_img.contour(mask, levels=[0.5], colors=["#3fd0ff"], linewidths=1.5)
    peak = np.unravel_index(np.argmax(entropy), entropy.shape)
    ax_img.axhline(peak[0], color="#f5d000", lw=0.8)
    ax_img.axvline(peak[1], color="#f5d000", lw=0.8)
    ax_img.set_title("prediction (contour) + voxel entropy (heat), centred on region 1 of 2",
                     color="white", fontsize=11)
    ax_img.set_axis_off()

    ax = fig.add_axes([0.5, 0.04, 0.48, 0.84])
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 10)
    ax.set_axis_off()
    steps = [
        ("1  Label a few cases", "Segment Editor, then 'Mark as labelled'"),
        ("2  Train", "DyCON on labelled + unlabelled scans, in a background process"),
        ("3  Review", "predictions + voxel entropy overlay; cases ranked by uncertainty"),
        ("4  Correct", "'Next uncertain region', fix it, 'Accept prediction'"),
        ("5  Export", ".seg.nrrd, NIfTI or DICOM SEG"),
    ]
    box_w, box_h, left = 7.6, 1.3, 0.4
    centres_y = [9.0, 7.0, 5.0, 3.0, 1.0]
    for (title, detail), cy in zip(steps, centres_y):
        ax.add_patch(FancyBboxPatch((left, cy - box_h / 2), box_w, box_h, boxstyle="round,pad=0.06",
                                    facecolor="#2e3440", edgecolor="#f08a24", linewidth=1.6))
        ax.text(left + 0.3, cy + 0.22, title, ha="left", va="center", color="white", fontsize=13,
                weight="bold")
        ax.text(left + 0.3, cy - 0.3, detail, ha="left", va="center", color="#c8ccd4", fontsize=9)
    for upper, lower in zip(centres_y[:-1], centres_y[1:]):
        ax.add_patch(FancyArrowPatch((left + 1.2, upper - box_h / 2 - 0.05), (left + 1.2, lower + box_h / 2 + 0.05),
                                     arrowstyle="-|>", mutation_scale=16, color="#9aa0aa"))
    # The loop: after correcting, training continues with the corrected case as labelled.
    right = left + box_w
    ax.add_patch(FancyArrowPatch((right + 0.05, centres_y[3]), (right + 0.05, centres_y[1]),
                                 arrowstyle="-|>", mutation_scale=18, color="#f08a24", linewidth=1.8,
                                 connectionstyle="arc3,rad=0.6"))
    ax.text(right + 1.75, centres_y[2], "repeat", ha="center", va="center", color="#f08a24",
            fontsize=11, rotation=90)
    ax.text(5, -0.15, "Diagram, not a screen capture", ha="center", color="#7a808a", fontsize=8)

    fig.savefig(path, facecolor=fig.get_facecolor())
    plt.close(fig)


def main() -> None:
    save_icon(REPO_ROOT / "Resources" / "SemiSupSeg.png")
    save_icon(REPO_ROOT / "SemiSupSeg" / "Resources" / "Icons" / "SemiSupSeg.png")
    save_loop_diagram(REPO_ROOT / "Resources" / "Screenshots" / "SemiSupSeg-loop.png")


if __name__ == "__main__":
    main()
