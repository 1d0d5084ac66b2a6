"""The worker's JSON-lines event stream (the contract with the Slicer module).

Each event is one JSON object per line on stdout, e.g. ``{"event": "progress", "iteration": 10,
...}``, and the same line is appended to ``runs/<id>/events.jsonl``. When stdout is a terminal a
person is watching: events then go to the file only and a tqdm progress bar is drawn on stderr.
Human-readable log lines always go to stderr.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import IO, Any, List, Optional


def _json_safe(value: Any) -> Any:
    """Floats that JSON cannot carry (NaN/Inf) become strings; tensors become numbers."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


class EventWriter:
    """Writes events to stdout (or a progress bar) and to ``events.jsonl`` once the run folder is known.

    Events emitted before ``attach`` (e.g. an input error found while reading the workspace) are
    kept and written to the file when it is attached.
    """

    def __init__(self, stream: IO[str] = None, progress_bar: Optional[bool] = None):
        self.stream = stream if stream is not None else sys.stdout
        self.progress_bar = self.stream.isatty() if progress_bar is None else progress_bar
        self.file: Optional[IO[str]] = None
        self.pending: List[str] = []
        self.bar = None

    def attach(self, events_path: Path) -> None:
        """Start appending to ``events_path`` (flushing the events emitted so far)."""
        events_path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(events_path, "a", encoding="utf-8")
        for line in self.pending:
            self.file.write(line + "\n")
        self.file.flush()
        self.pending.clear()

    def emit(self, event: str, **fields: Any) -> dict:
        """Write one event; returns it as a dict."""
        record = {"event": event, "time": round(time.time(), 3), **_json_safe(fields)}
        line = json.dumps(record)
        if self.file is not None:
            self.file.write(line + "\n")
            self.file.flush()
        else:
            self.pending.append(line)
        if self.progress_bar:
            self._show(record)
        elif self.stream is not None:
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (BrokenPipeError, ValueError, OSError):
                # The reader went away (e.g. Slicer closed): keep training, events.jsonl still has them.
                self.stream = None
                log("stdout is closed; events continue in events.jsonl only")
        return record

    def _show(self, record: dict) -> None:
        """Terminal view: a tqdm bar for progress, one readable line for everything else."""
        if record["event"] == "progress":
            from tqdm import tqdm

            if self.bar is None:
                self.bar = tqdm(total=record["total"], file=sys.stderr, unit="it", dynamic_ncols=True)
            self.bar.n = record["iteration"]
            self.bar.set_postfix({k: f"{v:.3f}" for k, v in record.get("losses", {}).items() if isinstance(v, float)})
            self.bar.refresh()
            return
        if self.bar is not None and record["event"] in ("finished", "cancelled", "error"):
            self.bar.close()
            self.bar = None
        details = {k: v for k, v in record.items() if k not in ("event", "time")}
        log(f"[{record['event']}] " + ", ".join(f"{k}={v}" for k, v in details.items()))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.file is not None:
            self.file.close()
            self.file = None


def log(message: str) -> None:
    """A human-readable line on stderr (never on stdout, which carries the events)."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
