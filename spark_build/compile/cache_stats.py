"""What the compiler cache says it did: hits, misses and remote work, per compile.

ccache and sccache each print their counters in their own JSON; both are read into one
`CacheStats`, and a compile's share is the difference of the counters before and after it
(both tools count for their whole lifetime, across builds).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

Tool = Literal["ccache", "sccache"]


@dataclass(frozen=True)
class CacheStats:
    """Counts for one compile (a delta) or for a cache's life (a snapshot). For nvcc under
    sccache, only whole objects count: its per-step PTX/CUBIN lookups would inflate hits."""

    hits: int = 0
    misses: int = 0
    uncacheable: int = 0
    errors: int = 0
    remote_hits: int = 0
    remote_errors: int = 0
    dist_compiles: int = 0

    @property
    def hit_rate(self) -> float | None:
        cacheable = self.hits + self.misses
        return self.hits / cacheable if cacheable else None

    def as_dict(self) -> dict[str, int | float | None]:
        rate = self.hit_rate
        return {**asdict(self), "hit_rate": None if rate is None else round(rate, 4)}


# ccache's counters by its own grouping (FLAG_UNCACHEABLE / FLAG_ERROR in its statistics.cpp).
_CCACHE_UNCACHEABLE = (
    "autoconf_test",
    "bad_compiler_arguments",
    "called_for_link",
    "called_for_preprocessing",
    "compile_failed",
    "compiler_produced_empty_output",
    "compiler_produced_no_output",
    "compiler_produced_stdout",
    "could_not_use_modules",
    "could_not_use_precompiled_header",
    "disabled",
    "multiple_source_files",
    "no_input_file",
    "output_to_stdout",
    "preprocessor_error",
    "recache",
    "unsupported_code_directive",
    "unsupported_compiler_option",
    "unsupported_environment_variable",
    "unsupported_source_encoding",
    "unsupported_source_language",
)
_CCACHE_ERRORS = (
    "bad_input_file",
    "bad_output_file",
    "compiler_check_failed",
    "could_not_find_compiler",
    "error_hashing_extra_file",
    "internal_error",
    "missing_cache_file",
    "modified_input_file",
)
# sccache's nvcc sub-steps, counted besides the object that contains them.
_SCCACHE_SUBSTEPS = {"PTX", "CUBIN", "CUDA (Device code)"}


def stats_argv(tool: Tool, tool_bin: Path) -> list[str]:
    if tool == "ccache":
        return [str(tool_bin), "--print-stats", "--format=json"]
    return [str(tool_bin), "--show-stats", "--stats-format=json"]


def parse_stats(text: str, tool: Tool) -> CacheStats:
    """The tool's JSON statistics as `CacheStats`; `ValueError` when it is not that JSON."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{tool} statistics are not JSON: {text[:80]!r}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{tool} statistics are not a JSON object")
    if tool == "ccache":
        count = lambda key: int(data.get(key, 0) or 0)  # noqa: E731
        return CacheStats(
            hits=count("direct_cache_hit") + count("preprocessed_cache_hit"),
            misses=count("cache_miss"),
            uncacheable=sum(count(k) for k in _CCACHE_UNCACHEABLE),
            errors=sum(count(k) for k in _CCACHE_ERRORS),
            remote_hits=count("remote_storage_hit"),
            remote_errors=count("remote_storage_error") + count("remote_storage_timeout"),
        )
    stats = data.get("stats")
    if not isinstance(stats, dict):
        raise ValueError("sccache statistics have no 'stats' object")

    def by_language(key: str) -> int:
        counts = (stats.get(key) or {}).get("counts") or {}
        return sum(int(v) for lang, v in counts.items() if lang not in _SCCACHE_SUBSTEPS)

    errors = stats.get("cache_errors") or {}
    return CacheStats(
        hits=by_language("cache_hits"),
        misses=by_language("cache_misses"),
        uncacheable=int(stats.get("requests_not_cacheable", 0)) + int(stats.get("requests_unsupported_compiler", 0)),
        errors=sum(int(v) for v in (errors.get("counts") or {}).values())
        + int(stats.get("cache_read_errors", 0))
        + int(stats.get("cache_write_errors", 0)),
        remote_hits=by_language("cache_hits") if "Redis" in str(data.get("cache_location", "")) else 0,
        dist_compiles=sum(int(v) for v in (stats.get("dist_compiles") or {}).values()),
    )


def stats_delta(before: CacheStats | None, after: CacheStats) -> CacheStats:
    """What one compile added. Counters only grow, except when a cache was wiped or a daemon
    restarted in between: a counter that went down is counted from zero."""
    if before is None:
        return after
    counts = {}
    for key, now in asdict(after).items():
        then = getattr(before, key)
        counts[key] = now - then if now >= then else now
    return CacheStats(**counts)


def query_stats(tool: Tool, tool_bin: Path, env: Mapping[str, str], *, log: Path | None = None) -> CacheStats | None:
    """The cache's counters now, or None (a note, not a failure) when the tool cannot say.
    A 10 ms local query rather than a build command, so it runs here and not through the
    step's runner; it is still logged, argv and answer, when `log` is given."""
    argv = stats_argv(tool, tool_bin)
    try:
        done = subprocess.run(argv, env=dict(env), capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _log(log, argv, f"# failed: {exc}")
        return None
    _log(log, argv, done.stdout.strip() + (f"\n# stderr: {done.stderr.strip()}" if done.stderr.strip() else ""))
    if done.returncode != 0:
        return None
    try:
        return parse_stats(done.stdout, tool)
    except ValueError:
        return None


def _log(log: Path | None, argv: Sequence[str], text: str) -> None:
    if log is None:
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"+ {' '.join(argv)}\n{text}\n")


def table_cell(record: Mapping[str, object] | None) -> str:
    """The compile row's cache cell in the timing table, from the result's `cache` entry:
    `ccache local: 87 hits, 6 misses, 0 uncacheable (93.5%)`; empty when there is none."""
    if not record:
        return ""
    stats = record.get("stats")
    if record.get("storage") == "none":
        head = "compiler cache off"
    else:
        head = f"{record.get('tool') or 'compiler cache'} {record.get('redis') or record.get('storage')}"
    if not isinstance(stats, Mapping):
        return head
    rate = stats.get("hit_rate")
    rate_text = f"{100 * float(rate):.1f}%" if isinstance(rate, (int, float)) else "n/a"
    counts = f"{stats.get('hits', 0)} hits, {stats.get('misses', 0)} misses, {stats.get('uncacheable', 0)} uncacheable"
    cell = f"{head}: {counts} ({rate_text})"
    if record.get("dist"):
        cell += f", {stats.get('dist_compiles', 0)} remote"
    return cell
