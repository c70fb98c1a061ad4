"""The compile's critical path: the dependency chain no number of jobs can shorten.

The graph comes from Ninja itself (`ninja -t graph`, which loads the manifest and never builds),
weighted by what each output took in this run, so an object reused from an earlier run weighs
nothing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from spark_build.compile.ninjalog import normalize_object

Deps = dict[str, set[str]]

_NODE = re.compile(r'^"(?P<id>[^"]+)" \[label="(?P<label>.*)"(?P<rule>, shape=ellipse)?\]$')
_EDGE = re.compile(r'^"(?P<src>[^"]+)" -> "(?P<dst>[^"]+)"')


def parse_ninja_graph(dot: str) -> Deps:
    """output → its direct inputs, from `ninja -t graph` (Graphviz). An edge with one input and
    one output is drawn file → file; others through an ellipse node for the rule."""
    labels: dict[str, str] = {}
    rules: set[str] = set()
    arrows: list[tuple[str, str]] = []
    for line in dot.splitlines():
        edge = _EDGE.match(line)
        if edge:
            arrows.append((edge["src"], edge["dst"]))
            continue
        node = _NODE.match(line)
        if node:
            labels[node["id"]] = normalize_object(node["label"])
            if node["rule"]:
                rules.add(node["id"])
    rule_in: dict[str, set[str]] = {}
    rule_out: dict[str, set[str]] = {}
    deps: Deps = {}
    for src, dst in arrows:
        if dst in rules:
            rule_in.setdefault(dst, set()).add(labels.get(src, src))
        elif src in rules:
            rule_out.setdefault(src, set()).add(labels.get(dst, dst))
        else:
            deps.setdefault(labels.get(dst, dst), set()).add(labels.get(src, src))
    for rule, outputs in rule_out.items():
        for out in outputs:
            deps.setdefault(out, set()).update(rule_in.get(rule, set()))
    return deps


def ninja_graph(build_dirs: Sequence[str], ninja: str | None) -> tuple[Deps | None, str]:
    """Ask Ninja for the graph of each build tree that still exists; `-t graph` only loads the
    manifest (it never regenerates or builds). Returns (None, why) when it cannot."""
    exe = ninja if ninja and Path(ninja).exists() else shutil.which("ninja")
    dirs = [d for d in build_dirs if (Path(d) / "build.ninja").is_file()]
    if not build_dirs:
        return None, "the trace names no build tree"
    if not dirs:
        return None, "the build tree is gone"
    if exe is None:
        return None, "no ninja on PATH"
    deps: Deps = {}
    for d in dirs:
        try:
            done = subprocess.run(
                [exe, "-C", d, "-t", "graph"], capture_output=True, text=True, timeout=120, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"ninja -t graph failed ({exc})"
        if done.returncode != 0:
            return None, f"ninja -t graph failed: {done.stderr.strip()[:200]}"
        for out, ins in parse_ninja_graph(done.stdout).items():
            deps.setdefault(out, set()).update(ins)
    return deps, "Ninja's dependency graph"


def critical_path(durations: Mapping[str, float], deps: Mapping[str, set[str]]) -> tuple[float, list[str]]:
    """The chain of outputs with the largest total duration (inputs first). Outputs not built in
    this run weigh 0: a reused object costs the run nothing."""
    best: dict[str, tuple[float, str | None]] = {}
    entered: set[str] = set()  # a node met again before it is finished closes a cycle: skipped
    for root in sorted(set(durations) | set(deps)):
        stack = [(root, False)]
        while stack:  # iterative DFS: vLLM's graph is shallow, but a deep one must not recurse
            current, expanded = stack.pop()
            if current in best or (not expanded and current in entered):
                continue
            inputs = [i for i in deps.get(current, ()) if i != current]
            if not expanded:
                entered.add(current)
                stack.append((current, True))
                stack.extend((i, False) for i in inputs if i not in best)
                continue
            finished = [i for i in inputs if i in best]  # an input still open is a cycle's back edge
            parent = max(finished, key=lambda i: best[i][0], default=None)
            below = best[parent][0] if parent is not None else 0.0
            best[current] = (below + durations.get(current, 0.0), parent)
    if not best:
        return 0.0, []
    end = max(best, key=lambda n: best[n][0])
    chain: list[str] = []
    node: str | None = end
    while node is not None:
        if durations.get(node, 0.0) > 0:
            chain.append(node)
        node = best[node][1]
    return best[end][0], chain[::-1]
