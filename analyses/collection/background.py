"""Work behind the step loop, one job at a time: a commit being written, a batch's n-grams being counted.

`Behind` runs each job it is handed in its own thread while the caller goes on. Handing over the next job,
or `wait()`, first waits for the one in flight: at most one job is ever running, and jobs run in the order
they were handed over. A job's error is raised in the caller at that wait, as the very exception the job
raised (its type, message and traceback kept), with a note saying which job it was.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable


class Behind:
    """A single worker thread running the jobs handed to it one at a time, behind the caller."""

    def __init__(self, name: str):
        self._name = name
        self._pool: ThreadPoolExecutor | None = None
        self._job: Future | None = None
        self._what = ""
        self._lock = threading.Lock()

    @property
    def busy(self) -> bool:
        """Whether a job has been handed over and not yet waited for."""
        return self._job is not None

    def submit(self, what: str, job: Callable[[], None]) -> float:
        """Wait for the job in flight (raising its error), then start `job`; `what` names it in an error.

        Returns the seconds spent waiting for the previous job."""
        waited = self.wait()
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix=self._name)
            self._what, self._job = what, self._pool.submit(job)
        return waited

    def wait(self) -> float:
        """Block until the job in flight is done; raise its error in the caller. Returns the seconds waited."""
        with self._lock:
            job, what, self._job = self._job, self._what, None
        if job is None:
            return 0.0
        start = time.perf_counter()
        try:
            job.result()
        except BaseException as e:
            if job.done() and job.exception() is e:
                e.add_note(f"(raised in the background thread {self._name!r} while {what})")
            else:  # the caller was interrupted while waiting: the job still runs, and `close` waits for it
                with self._lock:
                    self._job, self._what = job, what
            raise
        return time.perf_counter() - start

    def close(self, error: BaseException | None = None) -> None:
        """Wait for the job in flight and stop the thread. With the caller's own `error` being raised, a job's
        error is added to it as a note instead of replacing it."""
        try:
            self.wait()
        except BaseException as e:
            if error is None:
                raise
            error.add_note(f"meanwhile, in the background: {type(e).__name__}: {e}")
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
