"""Kill a subprocess with SIGKILL once a JSON file it writes shows it has made progress."""

import json
import signal
import time


def kill_when(proc, json_path: str, ready, timeout_s: float = 300.0, poll_s: float = 0.002) -> None:
    """SIGKILL `proc` as soon as `ready(parsed json_path)` is true; assert it was still running then."""
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with open(json_path) as f:
                if ready(json.load(f)):
                    break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(poll_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the process finished before it could be killed"
