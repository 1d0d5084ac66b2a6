"""Reading and writing images: the only place where arrays meet SimpleITK.

Arrays in the engine are indexed (x, y, z), i.e. ``arr[i, j, k] == img.GetPixel(i, j, k)``.
SimpleITK's own numpy view is (z, y, x), so every conversion transposes here and nowhere else.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional, Tuple, Union

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

# What a folder given as an image path most likely is, and what to do about it (an image path
# in dataset.json that names a folder is nearly always an unconverted DICOM series).
FOLDER_PROBLEM = "is a folder: load the DICOM series in Slicer or convert it to one volume file"
FOLDER_HINT = (
    "Load the series in 3D Slicer (DICOM module) and save it as one .nii.gz/.nrrd file, or "
    "convert it (e.g. with dcm2niix), then point the case's path at that file."
)


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
    if path.is_dir():
        raise InputError(f"Image path {path} {FOLDER_PROBLEM}", FOLDER_HINT)
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

    Raises ``IsADirectoryError`` when the path is a folder (a DICOM series, typically),
    ``FileNotFoundError`` when the file is missing and ``RuntimeError`` (SimpleITK's) when it is
    not a readable image; callers turn these into messages naming the case.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(str(path))
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


# ---- completeness of the voxel data ------------------------------------------------------
# ITK reads a NIfTI file (gzip-compressed or not) that was cut short without an error and fills
# the missing voxels with zeros, so an interrupted copy would silently train on a half-blank
# image or a half-erased label. ``check_image_complete`` reads the file once and compares the
# voxel bytes that are really there with what the header promises.

_READ_CHUNK = 1 << 20  # compressed bytes read at a time
_INFLATE_CHUNK = 16 << 20  # at most this many decompressed bytes are held at a time
_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # gzip wrapper: zlib checks the trailer's CRC-32 and length
_ZLIB_OR_GZIP_WBITS = 32 + zlib.MAX_WBITS  # MetaImage: zlib wrapper (gzip accepted too)
_NIFTI_HEADER_BYTES = 540  # NIfTI-2 header; NIfTI-1 needs 348
_HEADER_LINE_LIMIT = 1 << 16  # a text header line longer than this is not one (binary data)


class IncompleteImageError(Exception):
    """An image file's voxel data is shorter than its header promises, or its compressed
    stream is corrupt. The message says which (callers add the case and the file)."""


def check_image_complete(path: PathLike) -> None:
    """Raise ``IncompleteImageError`` unless ``path`` holds all the voxel bytes its header promises.

    Covers every format the engine reads: NIfTI (``.nii``, ``.nii.gz``; the header is inside
    the gzip stream), NRRD (``.nrrd``, ``.seg.nrrd``, ``.nhdr`` + data file; encodings raw and
    gzip, ITK's NrrdIO cannot read bzip2 at all) and MetaImage (``.mha``, ``.mhd`` + data file;
    raw or ``CompressedData = True``, a zlib stream). A compressed stream is decompressed to
    its end, once, without keeping the output: it must end with its end marker (zlib verifies
    the gzip trailer's CRC-32 and length, and the zlib Adler-32) and yield at least
    ``data offset + prod(sizes) * components * bytes per value`` bytes. An uncompressed file
    needs that many bytes after its header (``os.stat``, nothing read). Layouts the check does
    not follow (text encodings, multi-file data, a header it cannot parse) pass: ITK still
    reads them and reports its own errors.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        _check_nifti(path)
    elif name.endswith((".nrrd", ".nhdr")):
        _check_nrrd(path)
    elif name.endswith((".mha", ".mhd")):
        _check_metaimage(path)


def _check_nifti(path: Path) -> None:
    with open(path, "rb") as stream:
        compressed = stream.read(2) == _GZIP_MAGIC
        stream.seek(0)
        if compressed:
            length, head, ended = _inflated_length(stream, _GZIP_WBITS, keep=_NIFTI_HEADER_BYTES)
        else:
            head, length, ended = stream.read(_NIFTI_HEADER_BYTES), os.fstat(stream.fileno()).st_size, True
    expected = _nifti_expected_bytes(head)
    if expected is not None:
        _require_length(length, expected, compressed, ended)
    elif not ended:  # cut inside the header itself
        _require_length(length, length, compressed, ended)


def _nifti_expected_bytes(head: bytes) -> Optional[int]:
    """vox_offset + prod(dim[1..dim[0]]) * bitpix / 8 from a NIfTI-1 or -2 single-file header.

    ``None`` when ``head`` is not a single-file NIfTI header with sensible dimensions.
    """
    for endian in "<>":
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348 and head[344:347] == b"n+1":
            dims = struct.unpack(endian + "8h", head[40:56])
            bitpix = struct.unpack(endian + "h", head[72:74])[0]
            offset = struct.unpack(endian + "f", head[108:112])[0]
            break
        if len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540 and head[4:7] == b"n+2":
            bitpix = struct.unpack(endian + "h", head[14:16])[0]
            dims = struct.unpack(endian + "8q", head[16:80])
            offset = struct.unpack(endian + "q", head[168:176])[0]
            break
    else:
        return None
    rank = dims[0]
    if not 1 <= rank <= 7 or min(dims[1 : rank + 1]) < 1 or bitpix < 1 or bitpix % 8:
        return None
    return int(offset) + math.prod(dims[1 : rank + 1]) * (bitpix // 8)


# NRRD "type" values (teem accepts several spellings of each) -> bytes per value.
_NRRD_TYPE_BYTES = {
    **dict.fromkeys(("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"), 1),
    **dict.fromkeys(("short", "short int", "signed short", "signed short int", "int16", "int16_t",
                     "ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"), 2),
    **dict.fromkeys(("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t",
                     "float"), 4),
    **dict.fromkeys(("longlong", "long long", "long long int", "signed long long", "signed long long int",
                     "int64", "int64_t", "ulonglong", "unsigned long long", "unsigned long long int", "uint64",
                     "uint64_t", "double"), 8),
}


def _check_nrrd(path: Path) -> None:
    with open(path, "rb") as stream:
        fields, data_offset = _nrrd_header(stream)
    if fields is None:
        return
    value_bytes = _NRRD_TYPE_BYTES.get(" ".join(fields.get("type", "").lower().split()))
    if fields.get("type", "").lower() == "block":
        value_bytes = _int_or_none(fields.get("blocksize"))
    sizes = [_int_or_none(s) for s in fields.get("sizes", "").split()]
    encoding = fields.get("encoding", "").lower()
    byte_skip = _int_or_none(fields.get("byteskip", "0"))
    line_skip = _int_or_none(fields.get("lineskip", "0"))
    if not value_bytes or not sizes or None in sizes or byte_skip is None or line_skip is None:
        return  # a header this check cannot follow
    if byte_skip < 0 or line_skip < 0:
        return  # byte skip -1: the data is whatever the file ends with
    data_file = fields.get("datafile")
    if data_file is not None:
        if len(data_file.split()) != 1 or "%" in data_file or data_file.upper().startswith("LIST"):
            return  # data spread over several files
        data_path, data_offset = path.parent / data_file, 0
    else:
        data_path = path
    expected = math.prod(sizes) * value_bytes + byte_skip
    with open(data_path, "rb") as stream:
        stream.seek(data_offset)
        for _ in range(line_skip):
            stream.readline()
        if encoding in ("gzip", "gz"):
            length, _, ended = _inflated_length(stream, _GZIP_WBITS)
            _require_length(length, expected, True, ended)
        elif encoding == "raw":
            _require_length(os.fstat(stream.fileno()).st_size - stream.tell(), expected, False)
        # text encodings (ascii, hex) have no fixed size per value: not checked


def _nrrd_header(stream: BinaryIO) -> Tuple[Optional[dict], int]:
    """NRRD fields (keys lower-case without spaces: ``"byteskip"``) and where the data starts.

    ``(None, 0)`` when the file does not start with the NRRD magic.
    """
    if not stream.readline(_HEADER_LINE_LIMIT).startswith(b"NRRD"):
        return None, 0
    fields = {}
    for raw in iter(lambda: stream.readline(_HEADER_LINE_LIMIT), b""):
        line = raw.decode("latin-1").rstrip("\r\n")
        if not line:
            break  # the blank line that ends an attached header
        if line.startswith("#") or ":=" in line or ": " not in line:
            continue  # comments and key/value pairs say nothing about the data layout
        key, value = line.split(": ", 1)
        fields[key.replace(" ", "").lower()] = value.strip()
    return fields, stream.tell()


# MetaImage element types -> bytes (MetaIO's MET_ValueTypeSize; MET_LONG is 4 bytes there).
_MET_TYPE_BYTES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
    "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8,
}


def _check_metaimage(path: Path) -> None:
    with open(path, "rb") as stream:
        fields, data_offset = _metaimage_header(stream)
    data_file = fields.get("ElementDataFile")
    value_bytes = _MET_TYPE_BYTES.get(fields.get("ElementType", "").upper())
    sizes = [_int_or_none(s) for s in fields.get("DimSize", "").split()]
    channels = _int_or_none(fields.get("ElementNumberOfChannels", "1"))
    binary = fields.get("BinaryData", "True").strip().lower() == "true"
    if not data_file or not value_bytes or not sizes or None in sizes or not channels or not binary:
        return  # incomplete header, or voxels written as text (sizes unknown)
    if data_file.upper() != "LOCAL":
        if len(data_file.split()) != 1 or "%" in data_file or data_file.upper().startswith("LIST"):
            return  # one file per slice
        header_size = _int_or_none(fields.get("HeaderSize", "0"))
        if header_size is None or header_size < 0:
            return  # -1: data at the end of the file, whatever precedes it
        path, data_offset = path.parent / data_file, header_size
    expected = math.prod(sizes) * channels * value_bytes
    compressed = fields.get("CompressedData", "False").strip().lower() == "true"
    with open(path, "rb") as stream:
        stream.seek(data_offset)
        if compressed:
            length, _, ended = _inflated_length(stream, _ZLIB_OR_GZIP_WBITS)
            _require_length(length, expected, True, ended)
        else:
            _require_length(os.fstat(stream.fileno()).st_size - data_offset, expected, False)


def _metaimage_header(stream: BinaryIO) -> Tuple[dict, int]:
    """MetaImage ``Key = Value`` fields up to ``ElementDataFile`` (always the last one) and the
    offset just after that line (where LOCAL data starts)."""
    fields = {}
    for raw in iter(lambda: stream.readline(_HEADER_LINE_LIMIT), b""):
        key, sep, value = raw.decode("latin-1").partition("=")
        if not sep:
            break  # not a header line: not a MetaImage header we can follow
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            break
    return fields, stream.tell()


def _inflated_length(stream: BinaryIO, wbits: int, keep: int = 0) -> Tuple[int, bytes, bool]:
    """Decompress the rest of ``stream`` (gzip / zlib, per ``wbits``) without keeping it.

    Returns ``(decompressed byte count, the first keep decompressed bytes, whether the stream
    reached its end marker)``. Concatenated gzip members are followed (``cat a.gz b.gz`` is a
    valid gzip file); bytes after the last member are ignored. Raises ``IncompleteImageError``
    when the data is corrupt (zlib's data checks and the gzip trailer's CRC-32 and length).
    """
    inflater = zlib.decompressobj(wbits)
    length, head, pending = 0, b"", b""
    try:
        while True:
            if not pending:
                pending = stream.read(_READ_CHUNK)
                if not pending:
                    break
            if inflater.eof:
                if wbits != _GZIP_WBITS or not pending.startswith(_GZIP_MAGIC[:len(pending)]):
                    return length, head, True
                inflater = zlib.decompressobj(wbits)  # the next gzip member
            out = inflater.decompress(pending, _INFLATE_CHUNK)
            pending = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
            length += len(out)
            if len(head) < keep:
                head += out[: keep - len(head)]
    except zlib.error as err:
        raise IncompleteImageError(f"its compressed data is corrupt ({err})") from None
    return length, head, inflater.eof


def _require_length(length: int, expected: int, compressed: bool, ended: bool = True) -> None:
    """Raise unless ``length`` bytes cover ``expected`` and a compressed stream ``ended`` properly."""
    if length < expected:
        what = "its compressed data stops after" if compressed else "it holds"
        raise IncompleteImageError(
            f"{what} {length:,} of the {expected:,} bytes its header promises"
        )
    if not ended:
        raise IncompleteImageError("its compressed data stops before the end of the stream")


def _int_or_none(text: Optional[str]) -> Optional[int]:
    try:
        return int(str(text).strip())
    except ValueError:
        return None
