"""The live loop's view of the workspace: taking in new cases and changed labels while training runs.

``LiveWorkspace`` is a part of ``Trainer`` (a base class), kept apart because it is one job: every
``reload_every`` iterations (and before serving a prediction request naming an unknown case) look
at the workspace again (``workspace_watch`` keeps that to a few stats when nothing changed),
validate what is new or relabelled, and hand the sampler its new case lists, all or nothing. It
uses the trainer's ``workspace``, ``config``, ``spec``, ``split``, ``prepared``, ``sampler``,
``method``, ``digests``, ``case_states``, ``dataset_stamp``, ``refused`` and ``events``.
"""

from __future__ import annotations

from typing import Optional

from ..data.dataset import load_dataset
from ..data.preprocess import prepare_case
from ..data.validate import validate_dataset
from ..errors import InputError
from .case_split import CaseSplit, split_cases
from .warm_start import class_names
from .workspace_watch import HELD_OUT, LABELLED, UNLABELLED, WorkspaceChange, case_states, compare_states, file_stamp


class LiveWorkspace:
    """Mixed into ``Trainer``: reloading the workspace during training (see the module doc)."""

    def reload_workspace(self) -> Optional[WorkspaceChange]:
        """Take in what changed in the workspace since the last look; returns the change (None: nothing).

        Cheap when nothing changed: one stat of dataset.json and of each label file in use
        (``workspace_watch``). A new or changed case that fails validation is reported once
        (``warning``) and keeps its previous role and data; the others join the sampler at once.
        A ``workspace_reloaded`` event lists the added, removed, relabelled and moved case ids.
        """
        loaded = self._load_changed_dataset()
        if loaded is None:
            return None
        spec, split = loaded
        states = case_states(split, self.digests)
        change = compare_states(self.case_states, states)
        roles = {case.id: (role, case) for role, cases in self._split_roles(split) for case in cases}
        self._hold_back_invalid(spec, roles, states, change)
        self.case_states = states  # also after a refusal below: it is reported once
        if not change:
            return None
        try:
            self._apply_roles(spec, roles, change)
        except InputError as err:  # e.g. no labelled patch left to draw: train on as before
            self.events.emit("warning", message=f"workspace changed but cannot be used yet: {err.message}", hint=err.hint)
            return None
        self.events.emit(
            "workspace_reloaded",
            added=change.added,
            removed=change.removed,
            relabelled=change.relabelled,
            moved=change.moved,
            label_sha256={case: states[case][1] for case in change.relabelled if states[case][1]},
            labelled=len(self.split.labelled),
            unlabelled=len(self.split.unlabelled),
            held_out=len(self.split.held_out),
            iteration=self.iteration,
        )
        return change

    def _load_changed_dataset(self):
        """(spec, split) to compare: re-read when dataset.json's stamp changed; None when unusable."""
        stamp = file_stamp(self.workspace / "dataset.json")
        if stamp == self.dataset_stamp:
            return self.spec, self.split
        self.dataset_stamp = stamp  # a broken file is reported once, until it changes again
        try:
            spec = load_dataset(self.workspace)
            split = split_cases(spec, self.config["split"])
        except InputError as err:
            self.events.emit("warning", message=f"workspace changed but cannot be used yet: {err.message}", hint=err.hint)
            return None
        if spec.labels != self.spec.labels:
            self.events.emit(
                "warning",
                message=f"the workspace's classes changed ({class_names(self.spec.labels)} -> {class_names(spec.labels)}); "
                "this run keeps training on its own classes and cases",
                hint="Start a new run for the new classes (without --init-from: the network's outputs differ).",
            )
            return None
        return spec, split

    def _hold_back_invalid(self, spec, roles: dict, states: dict, change: WorkspaceChange) -> None:
        """Validate added and relabelled cases; one that fails keeps its previous role, data and
        state (a new one stays out) and leaves ``change``, in place. Each failing file state is
        reported once (``warning``) and not read again until its files change."""
        old_roles = {case.id: (role, case) for role, cases in self._split_roles(self.split) for case in cases}
        for case_id in change.added + change.relabelled:
            if not self._refuses(spec, roles[case_id][1], states[case_id]):
                self.refused.pop(case_id, None)
                continue
            change.discard(case_id)
            if case_id in old_roles:
                roles[case_id], states[case_id] = old_roles[case_id], self.case_states[case_id]
            else:
                del roles[case_id], states[case_id]

    def _refuses(self, spec, case, state) -> bool:
        """Whether ``case`` in this file ``state`` fails validation (a ``warning`` the first time)."""
        if self.refused.get(case.id) == state:
            return True
        try:
            validate_dataset(spec, cases=[case], require_labelled=False)
            return False
        except InputError as err:
            self.refused[case.id] = state
            self.events.emit("warning", case=case.id, message=f"case {case.id} changed but cannot be used yet: {err.message}",
                             hint=err.hint)
            return True

    def _apply_roles(self, spec, roles: dict, change: WorkspaceChange) -> None:
        """Prepare new and changed cases, drop removed ones, hand the sampler its new case lists.

        All or nothing: the trainer's cases change only once the sampler accepted the new lists.
        """
        prepared = {}
        for case_id, (role, case) in roles.items():
            old = self.prepared.get(case_id)
            changed = case_id in change.added or case_id in change.relabelled
            if old is None or changed or (role == LABELLED) != (old.label is not None):
                old = prepare_case(case, spec.modality, target_spacing=self.config["target_spacing"], with_label=role == LABELLED)
            prepared[case_id] = old
        by_role = {LABELLED: [], UNLABELLED: [], HELD_OUT: []}
        for role, case in roles.values():
            by_role[role].append(case)
        split = CaseSplit(by_role[LABELLED], by_role[UNLABELLED], by_role[HELD_OUT])
        try:
            self._hand_to_sampler(prepared, split)
        except InputError:
            self._hand_to_sampler(self.prepared, self.split)  # the sampler may have let go of its cases
            raise
        self.prepared, self.spec, self.split = prepared, spec, split

    def _hand_to_sampler(self, prepared: dict, split) -> None:
        unlabelled = [prepared[c.id] for c in split.unlabelled] if self.method.uses_unlabelled else []
        self.sampler.replace_cases([prepared[c.id] for c in split.labelled], unlabelled)

    @staticmethod
    def _split_roles(split):
        return ((LABELLED, split.labelled), (UNLABELLED, split.unlabelled), (HELD_OUT, split.held_out))
