"""Short host queries (`nvidia-smi`, `nvcc --version`, `git --version`): run, capture, time out.

A query's answer is small and needed whole, so it is captured rather than streamed through a
step log (that is `proc.Runner`'s job), and a missing or hanging program is an answer too.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence

Query = Callable[[Sequence[str]], tuple[int, str]]
"""Runs an argv and returns (exit status, the text it printed on stdout and stderr)."""

QUERY_TIMEOUT_S = 30.0


def run_command(argv: Sequence[str], *, timeout: float = QUERY_TIMEOUT_S) -> tuple[int, str]:
    """Run a short query command; a missing program reads as 127, a hang as 124.

    Host queries are seconds long and their output is small, so it is captured here rather
    than streamed through a step log; stderr is folded in because the interesting line of a
    failing nvcc or nvidia-smi is printed there.
    """
    try:
        done = subprocess.run(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        return 127, f"{argv[0]}: not found"
    except PermissionError:
        return 126, f"{argv[0]}: not executable"
    except subprocess.TimeoutExpired:
        return 124, f"{argv[0]}: no answer after {timeout:.0f} s"
    return done.returncode, done.stdout
