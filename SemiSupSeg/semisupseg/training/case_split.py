"""Which cases are labelled, unlabelled and held out for a run (the ``split`` configuration).

Positions are 1-based in ``dataset.json`` order, as the LA protocols state them ("cases 9-64").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

from ..errors import InputError

Selector = Union[None, str, Sequence[str]]


@dataclass
class CaseSplit:
    labelled: list  # Case objects whose labels are used
    unlabelled: list  # Case objects trained on without labels
    held_out: list  # Case objects never trained on (still predicted)


def _select(cases: list, selector: Selector, what: str) -> Optional[list]:
    """Cases chosen by a "a-b" position range, a list of ids, or None (no selection)."""
    if selector is None:
        return None
    if isinstance(selector, str):
        try:
            first, last = (int(v) for v in selector.split("-"))
        except ValueError:
            raise InputError(f"split.{what} '{selector}' is not a range like '9-64'.", "Use 'first-last' (1-based) or a list of case ids.")
        if not 1 <= first <= last <= len(cases):
            raise InputError(
                f"split.{what} range {selector} is outside 1-{len(cases)}.", "Positions are 1-based in dataset.json order."
            )
        return cases[first - 1 : last]
    by_id = {c.id: c for c in cases}
    unknown = [i for i in selector if i not in by_id]
    if unknown:
        raise InputError(f"split.{what} names unknown case ids {unknown[:5]}.", "Use ids as listed in dataset.json.")
    return [by_id[i] for i in selector]


def split_cases(spec, split: dict) -> CaseSplit:
    """Apply ``split`` to the dataset; a ``held_out`` list in dataset.json is the default hold-out."""
    cases = list(spec.cases)
    held_selector = split.get("held_out")
    if held_selector is None:
        held_selector = _declared_held_out(spec)
    held = _select(cases, held_selector, "held_out") or []
    held_ids = {c.id for c in held}
    pool = [c for c in cases if c.id not in held_ids]

    with_labels = [c for c in pool if c.label is not None]
    n_labelled = split.get("labelled")
    if n_labelled is not None:
        if int(n_labelled) < 1 or int(n_labelled) > len(with_labels):
            raise InputError(
                f"split.labelled = {n_labelled} but {len(with_labels)} training cases have labels.",
                "Use a number between 1 and the number of labelled cases.",
            )
        labelled = with_labels[: int(n_labelled)]
    else:
        labelled = with_labels
    labelled_ids = {c.id for c in labelled}

    chosen = _select(cases, split.get("unlabelled"), "unlabelled")
    candidates = pool if chosen is None else chosen
    unlabelled = [c for c in candidates if c.id not in labelled_ids and c.id not in held_ids]
    if not labelled:
        raise InputError(
            f"No labelled case to train on in {spec.root / 'dataset.json'}.",
            "Label at least one case (a label file in dataset.json, or 'Mark as labelled' in Slicer).",
        )
    return CaseSplit(labelled, unlabelled, held)


def _declared_held_out(spec) -> Optional[List[str]]:
    try:
        raw = json.loads((spec.root / "dataset.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    held = raw.get("held_out") if isinstance(raw, dict) else None
    return list(held) if held else None
