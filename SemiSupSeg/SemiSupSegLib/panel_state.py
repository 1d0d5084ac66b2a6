"""The module panel's shared state words: training states, the refusal exception, the progress bar.

Used by the presenter (``presenter.py``) and its two halves (``training_control.py``,
``review_control.py``); kept apart so that each of them imports it without importing the others.
"""

from __future__ import annotations

from dataclasses import dataclass

TRAINING, STOPPING, IDLE = "training", "stopping", "idle"
ENDED_STATES = ("finished", "cancelled", "failed")  # TrainingJob.state once the worker is gone


class PanelProblem(Exception):
    """A refusal the user can fix: ``str(problem)`` says how; ``title`` heads the dialog."""

    def __init__(self, message: str, title: str = ""):
        super().__init__(message)
        self.title = title


@dataclass
class ProgressView:
    text: str = ""
    maximum: int = 100  # 0: a busy indicator (a run without an end)
    value: int = 0
    visible: bool = False
