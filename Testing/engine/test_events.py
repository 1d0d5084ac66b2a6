"""The event stream survives a reader that goes away (events.jsonl keeps every event)."""

from __future__ import annotations

import json

from semisupseg.events import EventWriter


class ClosedPipe:
    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        pass

    def isatty(self):
        return False


def test_broken_stdout_does_not_stop_the_events_file(tmp_path):
    writer = EventWriter(stream=ClosedPipe())
    writer.emit("started", run="r")  # before attach: kept, then written to the file
    writer.attach(tmp_path / "events.jsonl")
    writer.emit("progress", iteration=1, losses={"loss": float("nan")})
    writer.close()
    lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in lines] == ["started", "progress"]
    assert lines[1]["losses"]["loss"] == "nan"  # non-finite floats stay valid JSON
