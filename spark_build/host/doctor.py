"""`invoke doctor`: gather the host, judge it by the preflight rules, and show the verdict.

The only part of preflight that reads the machine and prints; the rules themselves are pure
(`rules.evaluate`), so the table and the JSON are all that is left to get right here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from spark_build.arch import archlist as archmap
from spark_build.host.facts import HostFacts, gather_host
from spark_build.host.needs import VLLM_NEEDS, BuildNeeds
from spark_build.host.rules import Problem, can_build, evaluate, only_the_compiler_is_missing

_VERDICT_STYLE = {"ok": ("✓ ok", "green"), "warning": ("! warning", "yellow"), "error": ("✕ error", "red")}


def render_table(problems: Sequence[Problem], console: Console) -> None:
    """The checks as a table, then one line saying whether a build can start."""
    table = Table(title="spark-build doctor", title_justify="left")
    for column in ("check", "value", "verdict", "fix"):
        table.add_column(column, overflow="fold")
    for problem in problems:
        label, style = _VERDICT_STYLE[problem.severity]
        # Text cells: paths and nvcc messages may contain [brackets] that rich would read as markup.
        table.add_row(Text(problem.check), Text(problem.value), Text(label, style=style), Text(problem.fix))
    console.print(table)
    errors = sum(problem.severity == "error" for problem in problems)
    warnings = sum(problem.severity == "warning" for problem in problems)
    if errors and only_the_compiler_is_missing(problems):
        console.print(
            Text(
                f"✕ {errors} error(s), {warnings} warning(s): a build from source cannot start; "
                "`invoke build-vllm --prefer-wheel` needs no nvcc "
                "(it takes vLLM's official wheel when one proves itself here)",
                style="red",
            )
        )
    elif errors:
        console.print(Text(f"✕ {errors} error(s), {warnings} warning(s): a build cannot start", style="red"))
    else:
        console.print(Text(f"✓ a build can start ({warnings} warning(s))", style="green"))


def to_json(problems: Sequence[Problem], host: HostFacts | None = None) -> str:
    """`doctor --json`: the verdict, every check, and (when given) the host facts behind them."""
    document: dict[str, Any] = {
        "can_build": can_build(problems),
        "checks": [asdict(problem) for problem in problems],
    }
    if host is not None:
        document["host"] = host.to_dict()
    return json.dumps(document, indent=2)


def run_doctor(
    workdir: Path,
    cache_dir: Path,
    arch: str | None,
    as_json: bool,
    console: Console,
    *,
    python: Path | None = None,
    needs: BuildNeeds = VLLM_NEEDS,
    gather: Callable[..., HostFacts] = gather_host,
    gcc_minimum: str | None = None,
) -> int:
    """`invoke doctor`: gather, judge, print; 0 when a build can start, 1 when not.

    A malformed `--arch` raises `UsageError` (exit 2) before anything runs. `python` is the
    interpreter whose torch the build will use (default: the one running spark-build);
    `gcc_minimum` the oldest GCC the workdir's source accepts, when there is one.
    """
    if arch:
        archmap.parse_arch_list(arch)
    facts = gather(workdir, cache_dir, arch=arch, python=python)
    problems = evaluate(facts, arch, needs, gcc_minimum=gcc_minimum)
    if as_json:
        console.out(to_json(problems, facts), highlight=False)
    else:
        render_table(problems, console)
    return 0 if can_build(problems) else 1
