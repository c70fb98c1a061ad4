"""One error hierarchy: every failure carries its exit code, the log to read and the next step.

`main()` in `spark_build.cli` catches these and prints one clean message; a traceback is
shown only with `--debug`. Bad input exits 2, an interrupted build 130 (the shell's
convention for SIGINT), any other failure 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class SparkBuildError(Exception):
    """A failure the user can act on: what went wrong, where to look, what to try."""

    exit_code = 1

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        step: str | None = None,
        log: Path | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.step = step
        self.log = log
        self.details: list[str] = []  # e.g. a diagnosis of the log: cause and the quoted line

    def lines(self) -> list[str]:
        """The message as the user sees it: the problem, then the log, then the fix."""
        where = f"[{self.step}] " if self.step else ""
        out = [f"error: {where}{self.message}"]
        if self.log is not None:
            out.append(f"  log: {self.log}")
        out.extend(f"  {line}" for line in self.details)
        if self.hint:
            out.append(f"  fix: {self.hint}")
        return out


class UsageError(SparkBuildError):
    """Bad input: an option value, a missing tool, a workdir we cannot use. Nothing ran."""

    exit_code = 2


class BuildLocked(UsageError):
    """Another build holds this workdir; two builds in one tree would corrupt each other."""


class StateCorrupt(UsageError):
    """The checkpoint file could not be read; it was set aside, never trusted."""


class StepFailed(SparkBuildError):
    """A step ran and failed; what it finished before stays on disk for `--resume`."""


class HostProblem(SparkBuildError):
    """A failure of this host, its tools or its network, which says nothing about the wheel.

    Raised where a check could not be made (cuobjdump cannot start, the index cannot be
    reached, the probe interpreter died for a reason of its own), so that nothing reads it
    as a verdict: `--prefer-wheel` stops on it instead of refusing a wheel that was never judged.
    """


class Interrupted(SparkBuildError):
    """Ctrl-C or SIGTERM stopped the build; `--resume` continues from here."""

    exit_code = 130


def first_few(problems: Sequence[str], limit: int = 3) -> str:
    """The first `limit` problems for a one-line error, `…` marking that more are in the log."""
    return "; ".join(problems[:limit]) + (" …" if len(problems) > limit else "")
