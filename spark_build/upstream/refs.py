"""Which kind of git ref a build asks for, checked against the repository before anything runs.

A tag or branch clones shallow; a commit id needs a full clone and a checkout. A wrong `--ref`
is found at second zero by `git ls-remote`, not after torch is installed.
"""

from __future__ import annotations

from pathlib import Path

import git

from spark_build.errors import UsageError


def ref_kind(repo: str, ref: str) -> str:
    """'name' when the remote has a tag or branch called `ref`, 'commit' when it looks like a
    commit id (ls-remote cannot confirm those), else a bad-input error before anything runs."""
    try:
        listing = str(git.Git().ls_remote(repo))
    except git.GitCommandError as exc:
        raise UsageError(
            f"cannot read the repository {repo}: {exc.stderr.strip().splitlines()[-1] if exc.stderr else exc}",
            hint="check --repo (a URL or a local path) and the network",
        ) from exc
    refs = {line.split("\t", 1)[1] for line in listing.splitlines() if "\t" in line}
    if any(r in refs for r in (f"refs/tags/{ref}", f"refs/heads/{ref}", ref)):
        return "name"
    if 7 <= len(ref) <= 40 and all(c in "0123456789abcdef" for c in ref.lower()):
        return "commit"
    tags = sorted(r.removeprefix("refs/tags/") for r in refs if r.startswith("refs/tags/") and "^" not in r)
    shown = ", ".join(tags[-5:]) if tags else "none"
    raise UsageError(f"--ref '{ref}' is not a tag, branch or commit of {repo}", hint=f"recent tags: {shown}")


def clone_url(repo: str) -> str:
    """Local paths go through file:// so `--depth` works (git ignores it for plain paths)."""
    return repo if "://" in repo or repo.startswith("git@") else Path(repo).as_uri()
