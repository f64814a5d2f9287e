"""fedmpi's quick exit: the status, buffered output and atexit handlers survive it."""
from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import atexit, sys
from fedmpi.quick_exit import exit_now, leave_ordinarily
atexit.register(lambda: print("atexit ran"))
sys.stdout.write("buffered, no newline")
sys.stderr.write("err too")
if sys.argv[1] == "ordinary":
    leave_ordinarily()
exit_now(int(sys.argv[2]))
print("never")
"""


def run(mode: str, code: int) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode, str(code)], capture_output=True, text=True, timeout=60)
    assert "never" not in out.stdout
    return out


def test_status_output_and_atexit_survive_the_quick_exit():
    for code in (0, 3):
        out = run("quick", code)
        assert out.returncode == code
        assert out.stdout == "buffered, no newlineatexit ran\n" and out.stderr == "err too"


def test_leave_ordinarily_is_an_ordinary_exit_with_the_same_status():
    out = run("ordinary", 75)
    assert out.returncode == 75 and out.stdout == "buffered, no newlineatexit ran\n"
