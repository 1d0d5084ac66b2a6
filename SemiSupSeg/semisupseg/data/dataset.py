"""Reading a dataset description: the SemiSupSeg workspace and the MSD / nnU-Net layouts.

Workspace (written by the Slicer module, see DESIGN.md)::

    {"name": ..., "modality": {"0": "MR"}, "labels": {"0": "background", "1": ...},
     "cases": [{"id": "a", "image": "images/a.nii.gz", "label": "labels/a.nii.gz" | null}, ...]}

MSD / nnU-Net v1 (e.g. ``../shared/datasets/LA2018``)::

    {"modality": {"0": "MRI"}, "labels": {"0": "background", "1": ...},
     "training": [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}, ...],
     "test": ["./imagesTs/y.nii.gz", ...]}          # optional: unlabelled cases

nnU-Net v2 (no file lists: ``imagesTr/<id>_0000<file_ending>``, ``labels`` as name -> value) is
read too. In both MSD forms the case id is the image file name without its extension (and
without nnU-Net's ``_0000`` channel suffix).

Partial labels: ``"ignore_label": 255`` (any int 0..255 that is not a class) declares the label
value meaning "not annotated". A label file may then hold it wherever nobody labelled; such a
case is *partially labelled*. Without the key every label value must be a class.

Only the description is read here; whether the files exist and agree is ``validate.py``'s job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Union

from ..errors import InputError
from .io import strip_image_extension

DATASET_FILE = "dataset.json"
_CHANNEL_SUFFIX = "_0000"  # nnU-Net names the first (only) channel <id>_0000.<ext>


@dataclass(frozen=True)
class Case:
    """One volume: its id, image file and label file (``None`` when unlabelled).

    ``ignore_label`` is the dataset's "not annotated" value (``DatasetSpec.ignore_label``), carried
    on each case so that whoever reads the label file (``prepare_case``) knows it.
    """

    id: str
    image: Path
    label: Optional[Path]
    ignore_label: Optional[int] = None

    @property
    def labelled(self) -> bool:
        return self.label is not None


@dataclass
class DatasetSpec:
    """What ``dataset.json`` says: cases, label names (0 = background) and modality."""

    root: Path
    name: str
    modality: str  # first channel's modality: "MR", "CT" or anything else (z-scored like MR)
    labels: Dict[int, str]
    cases: List[Case]
    layout: str  # "workspace" | "msd"
    ignore_label: Optional[int] = None  # label value meaning "not annotated" (partial labels)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def labelled_cases(self) -> List[Case]:
        return [case for case in self.cases if case.label is not None]

    @property
    def unlabelled_cases(self) -> List[Case]:
        return [case for case in self.cases if case.label is None]

    def case(self, case_id: str) -> Case:
        """The case with this id (``KeyError`` if there is none)."""
        for case in self.cases:
            if case.id == case_id:
                return case
        raise KeyError(case_id)


def load_dataset(root: Union[str, Path]) -> DatasetSpec:
    """Read ``<root>/dataset.json`` in the workspace or the MSD / nnU-Net layout.

    Raises ``InputError`` for a missing or malformed file, labels that are not 0..C-1 or fewer
    than two classes, duplicate or unusable case ids, and a layout it does not recognise.
    """
    root = Path(root).expanduser().resolve()
    description = _read_json(root)
    if "cases" in description:
        layout, cases = "workspace", _workspace_cases(root, description["cases"])
    elif "training" in description:
        layout, cases = "msd", _msd_cases(root, description)
    elif "file_ending" in description or "channel_names" in description:
        layout, cases = "msd", _nnunet_v2_cases(root, description)
    else:
        raise InputError(
            f"{root / DATASET_FILE} has neither a 'cases' list (SemiSupSeg workspace) nor a "
            "'training' list (MSD / nnU-Net layout).",
            "Add \"cases\": [{\"id\": ..., \"image\": ..., \"label\": ... or null}] to dataset.json, "
            "or point to a folder in the Medical Segmentation Decathlon layout.",
        )
    _check_case_ids(root, cases)
    labels = _parse_labels(root, description.get("labels"))
    ignore_label = _parse_ignore_label(root, description.get("ignore_label"), labels)
    if ignore_label is not None:
        cases = [replace(case, ignore_label=ignore_label) for case in cases]
    return DatasetSpec(
        root=root,
        name=str(description.get("name") or root.name),
        modality=_first_modality(description),
        labels=labels,
        cases=cases,
        layout=layout,
        ignore_label=ignore_label,
    )


def _read_json(root: Path) -> dict:
    path = root / DATASET_FILE
    if not path.is_file():
        hint = (
            f"The folder {root} does not exist." if not root.exists()
            else "Choose the workspace folder (the one containing dataset.json), or create the "
            "workspace from the SemiSupSeg module in 3D Slicer."
        )
        raise InputError(f"No {DATASET_FILE} in {root}.", hint)
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(
            f"{path} is not valid JSON: {err}.",
            "Fix the file with a text editor or JSON validator (a trailing comma is a common cause).",
        ) from err
    if not isinstance(description, dict):
        raise InputError(f"{path} must contain a JSON object, not a {type(description).__name__}.",
                         "See the workspace format in the README.")
    return description


def _first_modality(description: dict) -> str:
    """Modality of channel 0; ``modality`` (MSD, workspace) or ``channel_names`` (nnU-Net v2)."""
    modality = description.get("modality", description.get("channel_names"))
    if isinstance(modality, dict) and modality:
        key = "0" if "0" in modality else sorted(modality, key=str)[0]
        return str(modality[key])
    if isinstance(modality, str) and modality:
        return modality
    return "unknown"


def _parse_labels(root: Path, labels: object) -> Dict[int, str]:
    """``{"0": "background", ...}`` -> ``{0: "background", ...}``, checked to be 0..C-1, C >= 2.

    nnU-Net v2's reversed form ``{"background": 0, ...}`` is accepted too.
    """
    where = root / DATASET_FILE
    hint = 'Write labels as {"0": "background", "1": "<structure>", ...} with consecutive values.'
    if not isinstance(labels, dict) or not labels:
        raise InputError(f"{where} has no 'labels' object.", hint)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in labels.values()):
        labels = {str(value): name for name, value in labels.items()}  # nnU-Net v2: name -> value
    parsed: Dict[int, str] = {}
    for key, name in labels.items():
        try:
            value = int(key)
        except (TypeError, ValueError):
            raise InputError(f"{where}: label key {key!r} is not an integer.", hint) from None
        parsed[value] = str(name)
    values = sorted(parsed)
    if len(values) < 2:
        raise InputError(
            f"{where} declares {len(values)} label(s) {values}; segmentation needs background "
            "and at least one structure.",
            hint,
        )
    if values != list(range(len(values))):
        raise InputError(f"{where}: label values {values} are not 0..{len(values) - 1} without gaps.", hint)
    return dict(sorted(parsed.items()))


def _parse_ignore_label(root: Path, value: object, labels: Dict[int, str]) -> Optional[int]:
    """``ignore_label``: absent/null -> None; else an int 0..255 that is not a class value."""
    if value is None:
        return None
    where = root / DATASET_FILE
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        raise InputError(
            f"{where}: ignore_label {value!r} is not an integer from 0 to 255.",
            'Write the "not annotated" label value as a number, e.g. "ignore_label": 255, or remove the key.',
        )
    if value in labels:
        raise InputError(
            f"{where}: ignore_label {value} is also the class '{labels[value]}' in 'labels'; a voxel "
            "cannot be both that class and not annotated.",
            f"Use a value that is no class (255 is the usual one; classes are 0..{len(labels) - 1}).",
        )
    return value


def _workspace_cases(root: Path, entries: object) -> List[Case]:
    where = root / DATASET_FILE
    hint = 'Each case is {"id": "<id>", "image": "images/<id>.nii.gz", "label": "labels/<id>.nii.gz" or null}.'
    if not isinstance(entries, list):
        raise InputError(f"{where}: 'cases' must be a list.", hint)
    cases = []
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or not entry["image"]:
            raise InputError(f"{where}: case number {number} has no 'image' path.", hint)
        case_id = entry.get("id")
        if case_id is None:
            case_id = strip_image_extension(Path(entry["image"]).name)
        label = entry.get("label")
        if label is not None and (not isinstance(label, str) or not label):
            raise InputError(f"{where}: case '{case_id}' has a 'label' that is not a path or null.", hint)
        cases.append(Case(str(case_id), root / entry["image"], root / label if label else None))
    return cases


def _msd_cases(root: Path, description: dict) -> List[Case]:
    where = root / DATASET_FILE
    hint = 'MSD lists are "training": [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}], "test": ["./imagesTs/y.nii.gz"].'
    training, test = description.get("training"), description.get("test", [])
    if not isinstance(training, list) or not isinstance(test, list):
        raise InputError(f"{where}: 'training' and 'test' must be lists.", hint)
    cases = []
    for number, entry in enumerate(training):
        image = entry.get("image") if isinstance(entry, dict) else None
        label = entry.get("label") if isinstance(entry, dict) else None
        if not isinstance(image, str) or not image:
            raise InputError(f"{where}: training entry number {number} has no 'image' path.", hint)
        cases.append(_msd_case(root, image, label if isinstance(label, str) and label else None))
    for number, entry in enumerate(test):
        image = entry.get("image") if isinstance(entry, dict) else entry
        if not isinstance(image, str) or not image:
            raise InputError(f"{where}: test entry number {number} is not an image path.", hint)
        cases.append(_msd_case(root, image, None))
    return cases


def _msd_case(root: Path, image: str, label: Optional[str]) -> Case:
    """An MSD case; nnU-Net v1 lists ``imagesTr/x.nii.gz`` but stores ``imagesTr/x_0000.nii.gz``."""
    image_path = root / image
    if not image_path.exists():
        stem = strip_image_extension(image_path.name)
        extension = image_path.name[len(stem):]
        with_channel = image_path.with_name(stem + _CHANNEL_SUFFIX + extension)
        if with_channel.exists():
            image_path = with_channel
    case_id = strip_image_extension(Path(image).name)
    return Case(case_id, image_path, root / label if label else None)


def _nnunet_v2_cases(root: Path, description: dict) -> List[Case]:
    """nnU-Net v2: cases are found by listing ``imagesTr`` (labelled) and ``imagesTs``."""
    ending = str(description.get("file_ending", ".nii.gz"))
    channels = description.get("channel_names", {"0": ""})
    if isinstance(channels, dict) and len(channels) > 1:
        raise InputError(
            f"{root / DATASET_FILE} declares {len(channels)} channels; SemiSupSeg trains on one.",
            "Keep a single channel (e.g. the T2 or the contrast-enhanced image) in a new dataset folder.",
        )
    cases = []
    for images, labels in (("imagesTr", "labelsTr"), ("imagesTs", None)):
        for image in sorted((root / images).glob(f"*{_CHANNEL_SUFFIX}{ending}")):
            case_id = image.name[: -len(_CHANNEL_SUFFIX + ending)]
            label = root / labels / f"{case_id}{ending}" if labels else None
            cases.append(Case(case_id, image, label))
    return cases


def _check_case_ids(root: Path, cases: List[Case]) -> None:
    """Ids name output files (``predictions/<id>.nii.gz``): non-empty, unique, no separators."""
    where = root / DATASET_FILE
    seen = set()
    for case in cases:
        if not case.id or case.id in (".", "..") or "/" in case.id or "\\" in case.id:
            raise InputError(
                f"{where}: case id {case.id!r} cannot be used as a file name.",
                "Use ids made of letters, digits, '-' and '_'.",
            )
        if case.id in seen:
            raise InputError(
                f"{where}: case id '{case.id}' appears more than once.",
                "Give every case its own id (and its own image file).",
            )
        seen.add(case.id)
