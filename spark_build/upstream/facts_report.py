"""`invoke recipe`'s output: a source's recipe facts as lines, and many releases as a Markdown table
(the table in docs/recipes.md is this output over the real sdists)."""

from __future__ import annotations

from collections.abc import Sequence

from spark_build.upstream.facts import SourceFacts

# One source's facts and the names of the spark-build patches whose range covers its release.
Read = tuple[SourceFacts, tuple[str, ...]]


def _short(revision: str | None) -> str:
    return (revision[:12] if revision and len(revision) == 40 else revision) or "?"


def facts_lines(label: str, facts: SourceFacts, patches: tuple[str, ...] = ()) -> list[str]:
    """One source's facts, a fact per line, then its external projects."""
    torch = facts.torch
    rows = [
        ("version", facts.version or "unknown"),
        ("use_existing_torch", facts.use_existing_torch or "none (the build cannot keep its own torch)"),
        ("build requirements", ", ".join(facts.build_requirements) or "none found"),
        ("torch", f"{' '.join(torch.packages)} ({torch.read_from})" if torch else "no pin in requirements/cuda.txt"),
        ("torch index", f"{torch.index} ({torch.index_why})" if torch else "—"),
        ("C++ standard", facts.cxx_standard or "unset"),
        ("host compiler", f"GCC >= {facts.gcc_minimum} (CMakeLists.txt's FATAL_ERROR)" if facts.gcc_minimum else "any"),
        ("Python", facts.requires_python or "unset"),
        ("CUTLASS", facts.cutlass_revision or "not fetched"),
        (f"{facts.arch} in CUDA_ARCHS", f"{facts.cmake_arch} (CUDA 13)"),
        ("spark-build patches", ", ".join(patches) or "none cover this release"),
    ]
    lines = [label] + [f"  {name:<20} {value}" for name, value in rows]
    lines.append(f"  external projects ({len(facts.projects)}), all fetched at configure:")
    for p in facts.projects:
        lines.append(
            f"    {p.name:<16} {_short(p.revision):<13} {p.src_dir_env or '-':<24} {facts.arch}: {p.target_use:<28} "
            f"{p.repository or '?'}"
        )
    return lines


def _patch_label(patch: str) -> str:
    """`0006-build-….patch` → `0006`; one applied beyond its tested range says so."""
    number = patch.split("-", 1)[0]
    return f"{number} (beyond its tested range)" if "applied beyond its tested range" in patch else number


def markdown_table(rows: Sequence[Read]) -> str:
    """Every release in one table, then each release's projects: what docs/recipes.md holds."""
    all_facts = [facts for facts, _ in rows]
    arch = all_facts[0].arch if all_facts else "12.1a"
    out = [
        f"| release | use_existing_torch | build requirements | torch pins (requirements/cuda.txt) | torch index "
        f"| C++ | Python | CUTLASS | {arch} in CUDA_ARCHS (CUDA 13) | external projects | spark-build patches |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f, patches in rows:
        torch = " ".join(f.torch.packages) if f.torch else "—"
        index = f.torch.index if f.torch else "—"
        out.append(
            f"| {f.version} | `{f.use_existing_torch or '—'}` | `{', '.join(f.build_requirements) or '—'}` | {torch} "
            f"| {index} | {f.cxx_standard or '—'} | `{f.requires_python or '—'}` | {f.cutlass_revision or '—'} "
            f"| {f.cmake_arch} | {len(f.projects)} | {', '.join(_patch_label(p) for p in patches) or '—'} |"
        )
    out += ["", f"External projects per release: revision, `*_SRC_DIR` variable, and what {arch} gets from it.", ""]
    for f in all_facts:
        out.append(
            f"- **{f.version}**: "
            + "; ".join(
                f"{p.name} `{_short(p.revision)}` ({p.src_dir_env or 'no variable'}; {p.target_use})"
                for p in f.projects
            )
        )
    return "\n".join(out) + "\n"
