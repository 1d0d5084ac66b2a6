"""The trainer's prediction rounds: when they are due, ``PREDICT`` requests, and writing them.

``PredictionRounds`` is a part of ``Trainer`` (a base class), kept apart because it is one job:
predict the configured cases periodically and at the end, serve a client's ``PREDICT`` request
(a JSON list of case ids in the run folder) at an iteration boundary, keep the other cases'
regions in ``regions.json`` when a round covers only some, and time each round for the budget.
The maps and regions themselves come from ``inference.predictor``. It uses the trainer's
``config``, ``split``, ``prepared``, ``method``, ``device``, ``run_dir``, ``events``, ``dist``,
``budget`` and ``clock``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

from .devices import is_mps_failure

PREDICT_REQUEST = "PREDICT"


class PredictionRounds:
    """Mixed into ``Trainer``: prediction rounds and requests (see the module doc)."""

    def _prediction_due(self, it: int) -> bool:
        cfg = self.config
        if (not self.continuous and it >= self.total) or cfg["predict_cases"] == "none":
            return False
        early = cfg["first_prediction_at"] and it == cfg["first_prediction_at"]
        periodic = cfg["predict_every"] and it % cfg["predict_every"] == 0
        return bool(early or periodic)

    def serve_predict_request(self) -> bool:
        """Predict the cases listed in the run folder's ``PREDICT`` file (a JSON list of case ids).

        The request is taken by renaming it first, so a new request written meanwhile is kept for
        the next boundary; it is removed once read. Unknown ids are looked for in the workspace
        once (a case just added), then reported with a ``warning``; the known ones are predicted.
        A file that is not a JSON list of ids gives a ``warning`` and is removed. Returns whether
        any case was predicted.
        """
        if not self.dist.is_main:
            return False
        request = self.run_dir / PREDICT_REQUEST
        if not request.exists():
            return False
        taken = self.run_dir / f".{PREDICT_REQUEST}.taken"
        try:
            os.replace(request, taken)
            case_ids = json.loads(taken.read_text())
        except FileNotFoundError:  # the client removed it again
            return False
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            case_ids = err
        finally:
            taken.unlink(missing_ok=True)
        if not isinstance(case_ids, list) or not case_ids or not all(isinstance(c, str) for c in case_ids):
            self.events.emit("warning", message=f"{PREDICT_REQUEST} request ignored: it must be a JSON list of case ids "
                             f"(read: {str(case_ids)[:200]})", hint='Write e.g. ["case0", "case3"] (atomically).')
            return False
        unknown = [c for c in case_ids if c not in self.prepared]
        if unknown:
            self.reload_workspace()
            unknown = [c for c in case_ids if c not in self.prepared]
        if unknown:
            self.events.emit("warning", message=f"{PREDICT_REQUEST} request names unknown case ids {unknown[:10]}",
                             hint=f"Cases of this run: {', '.join(list(self.prepared)[:10])}...")
        known = list(dict.fromkeys(c for c in case_ids if c in self.prepared))
        if known:
            self.predict(round_name="request", case_ids=known)
        return bool(known)

    # ---- prediction ----------------------------------------------------------------------
    def cases_to_predict(self) -> List[str]:
        which = self.config["predict_cases"]
        groups = {
            "all": self.split.labelled + self.split.unlabelled + self.split.held_out,
            "training": self.split.labelled + self.split.unlabelled,
            "held_out": self.split.held_out,
        }
        return [c.id for c in groups.get(which, [])]

    def predict(self, round_name: str, case_ids: Optional[List[str]] = None) -> None:
        """Predict ``case_ids`` (default: the configured ``predict_cases``) with the usual events.

        A round of some cases only (a ``PREDICT`` request) keeps the other cases' regions in
        ``regions.json``: the annotator's "next uncertain region" still covers every case.
        """
        if not self.dist.is_main:  # rank 0 predicts for the run
            return
        some_only = case_ids is not None
        previous = read_regions(self.run_dir) if some_only else None
        cases = [self.prepared[i] for i in (case_ids if some_only else self.cases_to_predict())]
        started = self.clock()
        try:
            self._predict_cases(cases, round_name)
        except (RuntimeError, NotImplementedError) as err:
            if self.fell_back_to_cpu or not is_mps_failure(self.device, err):
                raise
            self.fall_back_to_cpu(err)
            started = self.clock()
            self._predict_cases(cases, round_name)
        if self.budget:  # every round timed: the final round's estimate comes from them
            self.budget.record_prediction(self.clock() - started, sum(int(case.image.size) for case in cases))
        if previous is not None:
            keep_other_cases_regions(self.run_dir, previous, known=set(self.prepared))

    def _predict_cases(self, cases: list, round_name: str) -> None:
        from ..inference.predictor import predict_cases

        predict_cases(
            networks=self.method.inference_networks(),
            cases=cases,
            run_dir=self.run_dir,
            config=self.config,
            num_classes=self.num_classes,
            device=self.device,
            events=self.events,
            round_name=round_name,
            iteration=self.iteration,
        )


def read_regions(run_dir: Path) -> Optional[dict]:
    """The run's regions.json as a dict, or None when there is none (or it cannot be read)."""
    try:
        return json.loads((run_dir / "regions.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def keep_other_cases_regions(run_dir: Path, previous: dict, known: set) -> None:
    """Merge the regions and scores of cases of ``previous`` that the last round did not predict
    (and that are still cases of the run) back into regions.json; case_order is re-ranked."""
    from ..inference.regions import write_regions_json
    from ..inference.scores import rank_cases

    current = read_regions(run_dir)
    if current is None:
        return
    kept = {case: regions for case, regions in previous.get("cases", {}).items()
            if case in known and case not in current["cases"]}
    if not kept:
        return
    old_scores = previous.get("meta", {}).get("scores", {})
    scores = {**{case: old_scores[case] for case in kept if case in old_scores}, **current["meta"].get("scores", {})}
    meta = {**current["meta"], "scores": scores, "case_order": rank_cases(scores, order="uncertainty"),
            "cases_of_this_round": sorted(current["cases"])}
    write_regions_json(run_dir / "regions.json", {**kept, **current["cases"]}, meta)
