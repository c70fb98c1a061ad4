"""git in the repositories the tests build (vLLM-like histories, tagged as upstream tags them)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git(repo: Path, *args: str) -> str:
    """Run git in `repo` and return what it printed. The committer is given on the command line:
    a fresh CI machine has no ~/.gitconfig, and git refuses to commit without one."""
    command = ["git", "-C", str(repo), "-c", "user.email=t@example.invalid", "-c", "user.name=t", *args]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()
