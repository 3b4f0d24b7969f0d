"""The request ledger: a durable, append-only record of forget requests and their progress.

The coordinator writes one JSON line per event (``requested``, ``method_started``,
``method_done``, ``completed``) to ``ledger.jsonl`` in the run folder, and flushes it to disk
(``fsync``) before the work it announces starts. The state of a request is the fold of its
events, so the file is consistent after a kill at any point: a torn last line (the process died
while writing it) is ignored when read and cut off before the next append; a method that was
started but not done is simply not done. A rerun reads the ledger, skips completed requests and
finished methods, and finishes the rest; replaying a request id that is already completed is a
no-op, and reusing an id for a different request is an error.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vfl_sim.errors import ForgetRequestError

LEDGER_FILE = "ledger.jsonl"

PENDING, RUNNING, COMPLETED = "pending", "running", "completed"


@dataclass
class LedgerEntry:
    """The folded state of one request: its content, status and the methods applied to it."""

    request_id: str
    request: dict[str, Any]
    methods: list[str]
    status: str = PENDING
    done: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> its recorded result
    started: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.request_id,
            "status": self.status,
            "methods": self.methods,
            "methods_applied": list(self.done),
        }


class RequestLedger:
    """Append-only ledger of forget requests at ``path`` (JSON lines)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # -- reading -------------------------------------------------------------------------------

    def _lines(self) -> tuple[list[dict[str, Any]], int]:
        """The complete events, and the byte length of the file's consistent prefix."""
        if not self.path.exists():
            return [], 0
        raw = self.path.read_bytes()
        events: list[dict[str, Any]] = []
        good = 0
        for line in raw.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break  # torn write: the process died mid-line
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                break
            good += len(line)
        return events, good

    def entries(self) -> dict[str, LedgerEntry]:
        """Every request in the ledger, folded from its events, in the order they were made."""
        out: dict[str, LedgerEntry] = {}
        for ev in self._lines()[0]:
            rid = ev["request_id"]
            if ev["event"] == "requested":
                if rid in out:  # reopened with more methods: what was done stays done
                    out[rid].methods, out[rid].status = list(ev["methods"]), PENDING
                else:
                    out[rid] = LedgerEntry(rid, ev["request"], list(ev["methods"]))
                continue
            entry = out[rid]
            if ev["event"] == "method_started":
                entry.status = RUNNING
                entry.started.append(ev["method"])
            elif ev["event"] == "method_done":
                entry.done[ev["method"]] = ev["result"]
            elif ev["event"] == "completed":
                entry.status = COMPLETED
        return out

    def get(self, request_id: str) -> LedgerEntry | None:
        return self.entries().get(request_id)

    # -- writing -------------------------------------------------------------------------------

    def _append(self, event: dict[str, Any]) -> None:
        _, good = self._lines()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "r+b" if self.path.exists() else "wb") as fh:
            fh.truncate(good)  # drop a torn last line before appending after it
            fh.seek(good)
            stamped = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), **event}
            fh.write((json.dumps(stamped, sort_keys=True) + "\n").encode())
            fh.flush()
            os.fsync(fh.fileno())

    def open(self, request_id: str, request: dict[str, Any], methods: list[str]) -> LedgerEntry:
        """The entry of ``request_id``, recording the request first if it is new.

        Raises
        ------
        ForgetRequestError
            ``request_id`` is in the ledger with a different request.
        """
        entry = self.get(request_id)
        if entry is None:
            self._append({"event": "requested", "request_id": request_id, "request": request, "methods": methods})
            return LedgerEntry(request_id, request, list(methods))
        if entry.request != request:
            raise ForgetRequestError(
                f"forget.id '{request_id}' is already in the ledger {self.path} for another request "
                f"({json.dumps(entry.request, sort_keys=True)}); give this request another id"
            )
        new = [m for m in methods if m not in entry.methods]
        if new and entry.status == COMPLETED:
            # More methods for a completed request: reopen it for those only.
            self._append({"event": "requested", "request_id": request_id, "request": request, "methods": methods})
            entry = self.get(request_id)
            assert entry is not None
        return entry

    def method_started(self, request_id: str, method: str) -> None:
        self._append({"event": "method_started", "request_id": request_id, "method": method})

    def method_done(self, request_id: str, method: str, result: dict[str, Any]) -> None:
        self._append({"event": "method_done", "request_id": request_id, "method": method, "result": result})

    def completed(self, request_id: str) -> None:
        self._append({"event": "completed", "request_id": request_id})
