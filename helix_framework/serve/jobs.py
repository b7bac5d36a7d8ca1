"""Job records of `helix serve`: states, progress events, persistence, cancellation.

One small JSON file per job under the state directory, replaced atomically
on every state change, so a record is always whole. A server that starts
and finds records still ``queued`` or ``running`` (the previous process
died) marks them ``interrupted``: their outputs are whatever the command
guarantees for an interrupted run (the old result or none).

Jobs run on a small thread pool in the server process. Threads, not
processes, because the warm state (open sources, dequantized weights,
reference models) lives in this process and is what makes a second job
cheap; the heavy numpy work releases the GIL, so the event loop stays
responsive. Cancellation is cooperative: the job's progress callback checks
a flag before each tensor and raises `JobCancelled`.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from helix_framework import artifacts, outlock
from helix_framework.errors import HelixError, JobCancelled

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED, INTERRUPTED = (
    "queued", "running", "done", "failed", "cancelled", "interrupted")
FINAL = {DONE, FAILED, CANCELLED, INTERRUPTED}
#: Progress is persisted at most this often (events are kept in memory).
SAVE_EVERY_SECONDS = 1.0


class Job:
    """One job: its persisted record plus in-memory events and cancel flag."""

    def __init__(self, record: dict[str, Any], store: JobStore):
        self.record = record
        self.store = store
        self.events: list[dict[str, Any]] = []
        self.cancel_requested = threading.Event()
        self._saved_at = 0.0
        self._lock = threading.Lock()
        self.transition = threading.Lock()  # queued -> running vs queued -> cancelled

    @property
    def id(self) -> str:
        return self.record["id"]

    @property
    def state(self) -> str:
        return self.record["state"]

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        with self._lock:
            self.events.append({"event": kind, "data": data})

    def progress(self, phase: str, i: int, n: int, item: str | None = None) -> None:
        """Record progress and stop here if the job was cancelled."""
        if self.cancel_requested.is_set():
            raise JobCancelled(f"job {self.id} cancelled at {phase} {i} of {n}")
        info = {"phase": phase, "i": i, "n": n, "item": item}
        self.record["progress"] = info
        self.emit("progress", info)
        if time.monotonic() - self._saved_at >= SAVE_EVERY_SECONDS:
            self.save()

    def save(self) -> None:
        self._saved_at = time.monotonic()
        self.store.save(self)

    def finish(self, state: str, *, result: Any = None, error: dict[str, Any] | None = None) -> None:
        self.record.update(state=state, result=result, error=error, finished=time.time())
        self.save()
        self.emit(state, {"state": state, "result": result, "error": error})

    def view(self) -> dict[str, Any]:
        return dict(self.record)


class JobStore:
    """Every job this server knows, persisted under ``directory``."""

    def __init__(self, directory: Path, workers: int):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        # One server per state directory for the life of the process: another
        # would mark this one's running jobs interrupted (OutputLocked names it).
        self._lock_cm = outlock.hold(directory, "serve")
        self._lock_cm.__enter__()
        self.jobs: dict[str, Job] = {}
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="helix-job")
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        for path in sorted(self.directory.glob("*.json")):
            try:
                record = _read_json(path)
            except (HelixError, ValueError) as exc:
                log.warning("job record %s unreadable (%s); left alone", path, exc)
                continue
            if not isinstance(record, dict) or record.get("id") != path.stem:
                continue
            job = Job(record, self)
            if record.get("state") not in FINAL:
                record.update(state=INTERRUPTED, finished=time.time(),
                              error={"error": "the server stopped while this job was queued or running", "path": None})
                job.save()
            self.jobs[job.id] = job

    def save(self, job: Job) -> None:
        artifacts.write_json_atomic(self.directory / f"{job.id}.json", json_safe(job.record))

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def active(self) -> list[Job]:
        return [j for j in self.jobs.values() if j.state not in FINAL]

    def submit(self, kind: str, request: dict[str, Any], work: Callable[[Job], Any],
               describe_error: Callable[[BaseException], dict[str, Any]]) -> Job:
        """Create a queued job and run ``work(job)`` on the pool."""
        record = {"id": uuid.uuid4().hex[:16], "kind": kind, "state": QUEUED, "request": request,
                  "created": time.time(), "started": None, "finished": None, "progress": None,
                  "result": None, "error": None}
        job = Job(record, self)
        with self._lock:
            self.jobs[job.id] = job
        job.save()

        def run() -> None:
            with job.transition:
                if job.cancel_requested.is_set():
                    return
                job.record.update(state=RUNNING, started=time.time())
                job.save()
            job.emit(RUNNING, {"state": RUNNING})
            try:
                result = work(job)
            except JobCancelled:
                job.finish(CANCELLED, error={"error": "cancelled", "path": None})
            except BaseException as exc:  # a job's failure is its record, never the server's
                if not isinstance(exc, HelixError):
                    log.exception("job %s failed", job.id)
                job.finish(FAILED, error=describe_error(exc))
            else:
                job.finish(DONE, result=result)

        self.pool.submit(run)
        return job

    def cancel(self, job: Job) -> None:
        """A queued job is cancelled at once; a running one at its next tensor."""
        with job.transition:
            job.cancel_requested.set()
            if job.state == QUEUED:
                job.finish(CANCELLED, error={"error": "cancelled before it started", "path": None})


def json_safe(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null, other objects their str."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if hasattr(value, "item"):  # numpy scalars
        return json_safe(value.item())
    return str(value)


def _read_json(path: Path) -> Any:
    import json

    from helix_framework.bounded_read import read_regular_file

    return json.loads(read_regular_file(path, 1 << 20))
