"""Reading and writing images: the only place where arrays meet SimpleITK.

Arrays in the engine are indexed (x, y, z), i.e. ``arr[i, j, k] == img.GetPixel(i, j, k)``.
SimpleITK's own numpy view is (z, y, x), so every conversion transposes here and nowhere else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple, Union

import numpy as np
import SimpleITK as sitk

from ..atomic import atomic_output
from ..errors import InputError

PathLike = Union[str, "os.PathLike[str]"]

# Longest first, so that ".nii.gz" wins over ".gz".
IMAGE_EXTENSIONS = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")

# Formats that keep the voxels in a second file named inside the header: renaming the header
# after writing would leave it pointing at the temporary data file, so they cannot be written
# atomically with a rename and are refused for writing (reading them is fine).
_DETACHED_HEADER_EXTENSIONS = (".nhdr", ".mhd", ".hdr")


def image_extension(name: str) -> str:
    """The image extension of a file name (``"a.nii.gz" -> ".nii.gz"``), or its last suffix."""
    lower = name.lower()
    for ext in IMAGE_EXTENSIONS:
        if lower.endswith(ext):
            return name[-len(ext):]
    return Path(name).suffix


def strip_image_extension(name: str) -> str:
    """File name without its image extension: ``"LA_001.nii.gz" -> "LA_001"``."""
    ext = image_extension(name)
    return name[: len(name) - len(ext)] if ext else name


def read_image(path: PathLike) -> sitk.Image:
    """Read an image with SimpleITK; a missing or unreadable file raises ``InputError``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"Image file {path} does not exist.",
            "Check the path in dataset.json (paths are relative to the dataset folder).",
        )
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise InputError(
            f"Image file {path} cannot be read: {itk_reason(err)}",
            "Save it as NIfTI (.nii.gz), NRRD (.nrrd) or MetaImage (.mha), "
            "e.g. with 3D Slicer's Save dialog.",
        ) from err


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says, read without loading the voxels."""

    size: Tuple[int, ...]
    spacing: Tuple[float, ...]
    origin: Tuple[float, ...]
    direction: Tuple[float, ...]  # row-major dimension x dimension matrix
    pixel_id: int  # SimpleITK pixel id (sitk.sitkFloat32, ...)
    components: int  # 1 for scalar images, 3 for RGB, ...

    @property
    def dimension(self) -> int:
        return len(self.size)

    @property
    def is_float(self) -> bool:
        return self.pixel_id in (sitk.sitkFloat32, sitk.sitkFloat64)


def read_header(path: PathLike) -> ImageHeader:
    """Header of an image file (cheap: no voxels are read).

    Raises ``FileNotFoundError`` when the file is missing and ``RuntimeError`` (SimpleITK's)
    when it is not a readable image; callers turn these into messages naming the case.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(str(path))
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return ImageHeader(
        size=tuple(int(n) for n in reader.GetSize()),
        spacing=tuple(reader.GetSpacing()),
        origin=tuple(reader.GetOrigin()),
        direction=tuple(reader.GetDirection()),
        pixel_id=reader.GetPixelID(),
        components=reader.GetNumberOfComponents(),
    )


def to_array(img: sitk.Image) -> np.ndarray:
    """Voxels of ``img`` as a numpy array indexed (x, y, z) (components last for vector images).

    The result is a transposed view of SimpleITK's (z, y, x) copy, hence Fortran-ordered;
    call ``np.ascontiguousarray`` where C order matters.
    """
    arr = sitk.GetArrayFromImage(img)
    spatial = img.GetDimension()
    order = tuple(reversed(range(spatial))) + tuple(range(spatial, arr.ndim))
    return arr.transpose(order)


def from_array(arr: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """Image from an (x, y, z) array with the spacing, origin and direction of ``reference``.

    The geometry is set field by field (not ``CopyInformation``) so that ``arr`` may have a
    different size than ``reference`` (e.g. a crop that keeps the reference's origin).
    Booleans become uint8 and float16 becomes float32, which SimpleITK cannot store.
    """
    arr = np.asarray(arr)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    elif arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.T))
    img.SetSpacing(reference.GetSpacing())
    img.SetOrigin(reference.GetOrigin())
    img.SetDirection(reference.GetDirection())
    return img


def write_image_atomic(img: sitk.Image, path: PathLike, compress: bool = True) -> Path:
    """Write ``img`` to ``path`` atomically: readers see the old file or the whole new one.

    The image goes to a hidden temporary file in the same folder with the same extension
    (SimpleITK chooses the format from it), which is then renamed over ``path`` with
    ``os.replace`` (atomic within one file system). The temporary file is removed on failure.
    Missing parent folders are created. Returns ``path``.
    """
    path = Path(path)
    ext = image_extension(path.name)
    if ext.lower() in _DETACHED_HEADER_EXTENSIONS:
        raise ValueError(f"Cannot write {path} atomically: use a single-file format (.nii.gz, .nrrd, .mha).")
    with atomic_output(path, suffix=ext) as tmp_name:
        sitk.WriteImage(img, tmp_name, useCompression=compress)
    return path


def itk_reason(err: BaseException) -> str:
    """The useful part of a SimpleITK exception: its last line, without the ``sitk::ERROR:`` tag.

    ITK messages start with the C++ source location, which means nothing to a user.
    """
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    reason = lines[-1] if lines else type(err).__name__
    return reason.replace("sitk::ERROR:", "").strip()
