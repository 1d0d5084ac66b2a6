"""Warm start (``--init-from RUN``): a new run begins with an earlier run's final weights.

"Train again" after a few corrections should not throw away what the model already knows. The
new run loads ``<RUN>/checkpoints/last.pt`` into every network of its method; the optimiser
(momentum), the iteration count and the schedules start fresh, so the new run is an ordinary run
that merely starts from good weights.

Which weights go where: each network of the new method (the top-level names of its
``state_dict``: ``student``, ``teacher``, ``net_a``, ``net_b`` ...) takes the source network of
the same name. A teacher the source lacks (warm-starting DyCON from a supervised-only run) starts
as the source's student, as every teacher starts as its student's copy. Any other missing
network is an input error, as are a different class list, network or network options: those
weights would not mean the same thing (or not fit at all).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Dict, List

import torch

from ..config import load_config
from ..errors import InputError
from .checkpoint import load_checkpoint

TEACHER, STUDENT = "teacher", "student"


def resolve_source_run(workspace: Path, value: str) -> Path:
    """``value`` as a run folder, else as a run id of ``workspace``; it must hold ``last.pt``."""
    candidates = [Path(value).expanduser(), Path(workspace) / "runs" / str(value)]
    for folder in candidates:
        if (folder / "checkpoints" / "last.pt").is_file() and (folder / "config.json").is_file():
            return folder.resolve()
    raise InputError(
        f"--init-from {value}: no run with config.json and checkpoints/last.pt (looked at "
        f"{', '.join(str(c) for c in candidates)}).",
        "Pass a run folder (<workspace>/runs/<run-id>) or the id of a run of this workspace that finished or was stopped.",
    )


def class_names(labels: Dict[int, str]) -> List[str]:
    """{0: "background", 1: ...} -> names in label-value order (what a checkpoint records)."""
    return [labels[value] for value in sorted(labels)]


def source_class_names(source_run: Path, state: dict) -> List[str]:
    """The classes the source run trained on: recorded in its checkpoint, else its workspace's."""
    if state.get("classes"):
        return list(state["classes"])
    from ..data.dataset import load_dataset  # checkpoints written before classes were recorded

    return class_names(load_dataset(source_run.parent.parent).labels)


def check_compatible(source_run: Path, source_config: dict, source_classes: List[str], config: dict, classes: List[str]) -> None:
    """InputError when the source's weights cannot mean the same thing in the new run."""
    hint = "Leave out --init-from to start from scratch, or start from a run trained with the same classes and network."
    if source_classes != classes:
        raise InputError(
            f"Run {source_run.name} was trained on the classes {source_classes}; this workspace's classes are {classes}.",
            hint,
        )
    for key in ("network", "network_options"):
        if source_config[key] != config[key]:
            raise InputError(
                f"Run {source_run.name} used {key} {source_config[key]!r}; this run uses {config[key]!r}.",
                f"Use the source run's {key} (see its config.json). {hint}",
            )


def split_by_network(state_dict: Dict[str, torch.Tensor]) -> Dict[str, Dict[str, torch.Tensor]]:
    """{"student.conv.weight": w, ...} -> {"student": {"conv.weight": w}, ...}."""
    networks: Dict[str, Dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        name, _, rest = key.partition(".")
        networks.setdefault(name, OrderedDict())[rest] = value
    return networks


def warm_state_dict(source: Dict[str, torch.Tensor], target: Dict[str, torch.Tensor], source_name: str) -> Dict[str, torch.Tensor]:
    """The target method's state dict filled from the source's, network by network (see module doc)."""
    available = split_by_network(source)
    merged: Dict[str, torch.Tensor] = OrderedDict()
    for name in split_by_network(target):
        weights = available.get(name)
        if weights is None and name == TEACHER:
            weights = available.get(STUDENT)
        if weights is None:
            raise InputError(
                f"Run {source_name} has no network '{name}' (it has {sorted(available)}).",
                "Warm-start from a run of the same method (or of one with the same networks).",
            )
        merged.update({f"{name}.{key}": value for key, value in weights.items()})
    return merged


def warm_start(method, workspace: Path, value: str, config: dict, labels: Dict[int, str]) -> dict:
    """Load the source run's final weights into ``method``; returns what config.json and the
    trainer need: {"run": resolved folder, "iteration": the source's iteration count,
    "teacher_continues": whether the teacher came from the source's own teacher}.
    """
    source_run = resolve_source_run(workspace, value)
    state = load_checkpoint(source_run / "checkpoints" / "last.pt")
    source_config = load_config(source_run / "config.json")
    check_compatible(source_run, source_config, source_class_names(source_run, state), config, class_names(labels))
    merged = warm_state_dict(state["model"], method.state_dict(), source_run.name)
    try:
        method.load_state_dict(merged)
    except RuntimeError as err:  # shapes differ although names match (e.g. a network built otherwise)
        raise InputError(f"The weights of run {source_run.name} do not fit this run's networks ({err}).",
                         "Warm-start from a run with the same network and classes, or leave out --init-from.")
    teacher_continues = TEACHER in split_by_network(state["model"]) and TEACHER in split_by_network(merged)
    return {"run": source_run, "iteration": int(state["iteration"]), "teacher_continues": teacher_continues}

