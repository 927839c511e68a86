"""deployments/priority.py:lower_priority: every thread of the process yields, those
started before and after it (a replica's Ray threads exist before its constructor runs)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_every_thread_of_the_process_is_lowered_and_new_ones_inherit() -> None:
    # In a child process: this one's threads keep their priority.
    script = textwrap.dedent(
        """
        import os, threading
        from deployments.priority import lower_priority

        def nice_of_this_thread():
            return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

        got = {}
        ready, done = threading.Event(), threading.Event()

        def before():
            ready.set()
            done.wait()
            got["before"] = nice_of_this_thread()

        t = threading.Thread(target=before)
        t.start()
        ready.wait()
        start = nice_of_this_thread()
        lower_priority(3)
        done.set()
        t.join()
        after = threading.Thread(target=lambda: got.__setitem__("after", nice_of_this_thread()))
        after.start()
        after.join()
        print(start, nice_of_this_thread(), got["before"], got["after"])
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    start, main, before, after = map(int, out.split())
    expected = min(19, start + 3)
    assert (main, before, after) == (expected, expected, expected)
