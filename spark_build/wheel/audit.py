"""What every wheel audit's report shares: its problems, one line when it failed, a table.

Three audits — linkage, GPU code, and the whole proof that runs both and imports the wheel —
report to the same places: the validate step's one-line error, the tables in its log, and
summary.json. So they answer alike: `problems` (empty when the wheel checks out), `ok`,
`raise_if_failed` (one `StepFailed`, the rest in the log) and `render(console)`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from spark_build.errors import StepFailed


def first_and_more(problems: Sequence[str]) -> str:
    """The first problem, and how many more the log holds: `… (+2 more in the log)`."""
    more = f" (+{len(problems) - 1} more in the log)" if len(problems) > 1 else ""
    return f"{problems[0]}{more}"


class AuditReport(ABC):
    """Base of the audit reports. A report gives its `problems` (a field or a property), its
    table (`render`) and the next step to suggest (`fix`); it may word its one line itself
    (`failure`)."""

    if TYPE_CHECKING:
        # Declared for the type checker only: a field in one report, a property in another.

        @property
        def problems(self) -> Sequence[str]: ...

    @property
    def ok(self) -> bool:
        return not self.problems

    def failure(self) -> str:
        """The one line a failed audit raises (the problems are non-empty)."""
        return first_and_more(self.problems)

    @abstractmethod
    def fix(self) -> str:
        """What to try when the audit fails."""

    @abstractmethod
    def render(self, console: Console) -> None:
        """The report as a table, for the terminal and the step log."""

    def raise_if_failed(self, *, step: str = "validate", log: Path | None = None, hint: str | None = None) -> None:
        if self.problems:
            raise StepFailed(self.failure(), step=step, log=log, hint=hint or self.fix())
