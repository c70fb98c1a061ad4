"""changes: upstream pull requests (`--pr`) and local patches (`--patch`) on top of the ref.

What Spark users ask a builder for after "pick a release" is "with that fix that is not released
yet". A PR is fetched from the repository (`pull/N/head`, as GitHub publishes it) and its change
taken against its merge base with the checked-out ref — not GitHub's `.diff`, which is against the
PR's own base branch and drags in whatever that branch gained since the release. Each change is
applied with `git apply --3way` (a context that moved still applies), skipped when already in the
tree (a PR merged before the release), and a conflict stops the build naming the files. Offline,
a PR's change is given as a `--patch` file. A change that touches only the package's Python
files is named as such: it needs no compile.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import git

from spark_build.config import PullRequest
from spark_build.durable import sha256_of
from spark_build.errors import StepFailed
from spark_build.pipeline.step import Context, Step
from spark_build.wheel.repatch import Change, Run, changed_files, python_only


@dataclass(frozen=True)
class Fetched:
    """A PR's change against the checked-out ref: its head commit and the diff file."""

    pr: PullRequest
    head: str
    diff: Path
    files: tuple[str, ...]


def _git_out(src: Path, *args: str) -> str:
    """A local, read-only git query whose answer we need (merge-base, rev-parse, diff), through
    gitpython as the clone step reads; kept byte-exact, since a diff's last newline matters."""
    return str(git.Repo(src).git.execute(["git", *args], strip_newline_in_stdout=False))


def fetch_pr(src: Path, pr: PullRequest, repo: str, out: Path, run: Run, *, base_ref: str = "HEAD") -> Fetched:
    """Fetch `pull/N/head` and write its change against its merge base with `base_ref` (the
    checked-out ref) to `out`.

    A shallow clone (tags are cloned with --depth 1) has no merge base: it is unshallowed first."""
    if _git_out(src, "rev-parse", "--is-shallow-repository").strip() == "true":
        run(["git", "-C", src, "fetch", "--unshallow", "--tags", repo])
    if run(["git", "-C", src, "fetch", repo, f"+pull/{pr.number}/head:refs/spark-build/pr/{pr.number}"]) != 0:
        raise StepFailed(
            f"cannot fetch {pr.label} from {repo} (pull/{pr.number}/head)",
            hint="check the number and the repository; offline, give its change as --patch FILE",
        )
    head = _git_out(src, "rev-parse", f"refs/spark-build/pr/{pr.number}^{{commit}}").strip()
    try:
        base = _git_out(src, "merge-base", base_ref, head).strip()
    except git.GitCommandError as err:
        raise StepFailed(
            f"{pr.label} shares no history with the checked-out ref (no merge base)",
            hint="check that --repo (or the PR's URL) is the repository the PR belongs to",
        ) from err
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_git_out(src, "diff", "--binary", base, head))
    files = tuple(_git_out(src, "diff", "--name-only", base, head).splitlines())
    return Fetched(pr, head, out, files)


def apply_change(src: Path, diff: Path, label: str, run: Run) -> bool:
    """Apply one change with `git apply --3way`; False when the tree already has it (an empty
    change too: a PR merged with its own commits has its head in the ref). A conflict is undone —
    the files it touched are put back as they were — and stops the build naming the files."""
    files = changed_files(diff)
    if not files or run(["git", "-C", src, "apply", "--reverse", "--check", diff]) == 0:
        return False
    before = {f: (src / f).read_bytes() if (src / f).is_file() else None for f in files}
    if run(["git", "-C", src, "apply", "--3way", diff]) == 0:
        return True
    conflicted = _git_out(src, "diff", "--name-only", "--diff-filter=U").split()
    run(["git", "-C", src, "reset", "-q", "--", *files])
    for name, content in before.items():
        if content is None:
            (src / name).unlink(missing_ok=True)
        else:
            (src / name).write_bytes(content)
    raise StepFailed(
        f"{label} does not apply to this ref: conflicts in {', '.join(conflicted) or 'the files the log names'}",
        hint="rebase the change onto the ref (or pick a ref it applies to), then run the build again",
    )


def changed_release(src: Path, changes: Sequence[tuple[str, Path]], run: Run) -> Path:
    """The release checkout in `src` with exactly `changes` (label, diff) applied, as the build's
    changes step applies them: what a `--prefer-wheel` completion configures and compiles. The
    tree is put back to its ref first, so a change of an earlier run never reaches this one's
    targets; files the reset leaves alone keep their times, so Ninja reuses their objects. (A tree
    without git, such as an unpacked sdist, has no ref to go back to.)"""
    back: list[list[str | os.PathLike[str]]] = [
        ["git", "-C", src, "reset", "-q", "--hard"],
        ["git", "-C", src, "clean", "-q", "-fd"],
    ]
    for argv in back if (src / ".git").exists() else []:
        if run(argv) != 0:
            raise StepFailed(
                f"cannot put {src} back to its release before applying the changes",
                hint=f"remove {src}: the next run clones the release again",
            )
    for label, diff in changes:
        apply_change(src, diff, label, run)
    return src


def fetch_prs_for_wheel(folder: Path, repo: str, tag: str, prs: Sequence[PullRequest], run: Run) -> list[Fetched]:
    """The PRs' changes against a release tag without a checkout, for `--prefer-wheel`: a bare
    repository in `folder` holding the tag's history and the PR heads, nothing compiled."""
    bare = folder / "upstream.git"
    if not (bare / "HEAD").is_file():
        run(["git", "init", "-q", "--bare", bare])
    if run(["git", "-C", bare, "fetch", repo, f"+refs/tags/{tag}:refs/tags/{tag}"]) != 0:
        raise StepFailed(f"cannot fetch {tag} from {repo}", hint="check --repo and --ref, and the network")
    return [
        fetch_pr(bare, pr, pr.repo or repo, folder / f"pr-{pr.number}.diff", run, base_ref=f"refs/tags/{tag}")
        for pr in prs
    ]


def patch_version_label(patch: Path) -> str:
    """The local version part a wheel with this `--patch` carries: `patch` + its sha256's first 8."""
    return f"patch{sha256_of(patch)[:8]}"


def changes_for_wheel(
    folder: Path, repo: str, tag: str, prs: Sequence[PullRequest], patch_files: Sequence[Path], run: Run
) -> tuple[Change, ...]:
    """`--pr` and `--patch` as `--prefer-wheel` carries them onto the official wheel: each diff,
    whether it is Python only, and the local version label it adds (pr12345, patch1a2b3c4d)."""
    fetched = fetch_prs_for_wheel(folder, repo, tag, prs, run) if prs else []
    from_prs = [Change(f.pr.label, f.diff, python_only(f.files), f.pr.version_label) for f in fetched]
    from_files = [Change(p.name, p, python_only(changed_files(p)), patch_version_label(p)) for p in patch_files]
    return (*from_prs, *from_files)


class Changes(Step):
    name = "changes"
    summary = "apply --pr pull requests and --patch files on top of the ref (git apply --3way)"

    def inputs(self, ctx: Context) -> Mapping[str, Any]:
        patches = {str(p): sha256_of(p) for p in ctx.config.patch_files}
        return {"prs": [str(pr) for pr in ctx.config.prs], "patch_files": patches}

    def run(self, ctx: Context) -> dict[str, Any]:
        def git(argv: list[str | os.PathLike[str]]) -> int:
            return ctx.run(self.name, argv, check=False)

        applied: list[dict[str, Any]] = []
        for pr in ctx.config.prs:
            out = ctx.workdir / "changes" / f"pr-{pr.number}.diff"
            fetched = fetch_pr(ctx.src, pr, pr.repo or ctx.config.repo, out, git)
            applied.append(
                self._apply(ctx, pr.label, fetched.diff, fetched.files, git, pr.version_label, head=fetched.head)
            )
        for patch in ctx.config.patch_files:
            applied.append(self._apply(ctx, patch.name, patch, changed_files(patch), git, patch_version_label(patch)))
        return {"changes": applied, "python_only": bool(applied) and all(c["python_only"] for c in applied)}

    def _apply(
        self,
        ctx: Context,
        label: str,
        diff: Path,
        files: Sequence[str],
        git: Run,
        version_label: str,
        *,
        head: str | None = None,
    ) -> dict[str, Any]:
        new = apply_change(ctx.src, diff, label, git)
        only_python = python_only(files)
        state = "applied" if new else "already in the ref, skipped"
        kind = "Python only" if only_python else "native code"
        ctx.notes.append(f"changes: {label}{f' (head {head[:12]})' if head else ''} {state}; {kind}")
        return {
            "label": label,
            "head": head,
            "diff": str(diff),
            "applied": new,
            "python_only": only_python,
            "version_label": version_label,
        }

    def check(self, ctx: Context, result: Mapping[str, Any]) -> bool:
        def git(argv: list[str | os.PathLike[str]]) -> int:
            return ctx.run(self.name, argv, check=False)

        return all(
            Path(c["diff"]).is_file() and git(["git", "-C", ctx.src, "apply", "--reverse", "--check", c["diff"]]) == 0
            for c in result.get("changes", [])
        )
