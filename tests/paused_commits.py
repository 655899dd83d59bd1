"""Run a script with its background commits paused at one step, announced in a JSON file, so that a test can
SIGKILL it there (`kill.kill_when`):

    python tests/paused_commits.py MARKER STEP PAUSE_S -- scripts/collect.py ARGS...

Each commit written by a thread other than the main one writes {"step", "generation", "thread"} to MARKER on
reaching STEP, then sleeps PAUSE_S seconds while the step loop goes on. The steps of `StatsStore.commit`:
"start" (nothing of the new generation written), "written" (its arrays written and synced, the manifest
not yet), "committed" (the manifest names it; the links and the old generation not yet updated).
"""

import json
import os
import runpy
import sys
import threading
import time

STEPS = ("start", "written", "committed")


def _pause_at(step: str, marker: str, pause_s: float) -> None:
    """Patch `analyses.collection.store` so that background commits announce `step` and pause there."""
    from analyses.collection import store

    def announce(at: str, generation: int) -> None:
        if at != step or threading.current_thread() is threading.main_thread():
            return
        tmp = marker + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"step": at, "generation": generation, "thread": threading.current_thread().name}, f)
        os.replace(tmp, marker)
        time.sleep(pause_s)

    commit, fsync_tree, link = store.StatsStore.commit, store._fsync_tree, store.StatsStore._link

    def paused_commit(self, *args, **kwargs):
        announce("start", self.manifest["generation"] + 1)
        return commit(self, *args, **kwargs)

    def paused_fsync_tree(path):
        fsync_tree(path)
        announce("written", int(os.path.basename(path).removeprefix("data-")))

    def paused_link(self):
        announce("committed", self.manifest["generation"])
        link(self)

    store.StatsStore.commit, store._fsync_tree, store.StatsStore._link = paused_commit, paused_fsync_tree, paused_link


def main() -> None:
    marker, step, pause_s = sys.argv[1], sys.argv[2], float(sys.argv[3])
    if step not in STEPS:
        raise SystemExit(f"unknown step {step!r}; one of {', '.join(STEPS)}")
    script = sys.argv[sys.argv.index("--") + 1:]
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    _pause_at(step, marker, pause_s)
    sys.argv = script
    runpy.run_path(script[0], run_name="__main__")


if __name__ == "__main__":
    main()
