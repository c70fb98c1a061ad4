"""Which git ref a build asks for, checked against the repository before anything runs.

A tag or branch clones shallow; a commit id needs a full clone and a checkout. A wrong `--ref`
is found at second zero by `git ls-remote`, not after torch is installed. `latest` names the
newest release tag (`vX.Y.Z`, no release candidates) and `main` the development branch, whose
version is taken as the next after the newest release (what setuptools-scm calls it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import git
from packaging.version import Version

from spark_build.errors import UsageError

LATEST = "latest"
RELEASE_TAG = re.compile(r"v(\d+\.\d+\.\d+)")
# The files the recipe facts are read from; a scratch read of a ref checks out only these.
RECIPE_PATHS = (
    "CMakeLists.txt",
    "cmake",
    "requirements",
    "pyproject.toml",
    "setup.py",
    "use_existing_torch.py",
    "tools/use_existing_torch.py",
)


@dataclass(frozen=True)
class ResolvedRef:
    """A `--ref` as the repository answers it."""

    asked: str  # what the user wrote: latest, main, v0.33.0, a commit id
    name: str  # what is cloned: the tag, the branch or the commit
    kind: str  # tag, branch or commit
    commit: str | None  # None for a commit id ls-remote cannot confirm
    version: Version | None  # the release; a branch: the next after the newest release, .dev0

    def describe(self) -> str:
        """One line for the plan: `latest → v0.33.0 (tag, commit 1a2b3c…)`."""
        head = self.name if self.asked == self.name else f"{self.asked} → {self.name}"
        if self.kind == "commit":
            return f"{head} (a commit id{'' if self.commit else '; the full id is known after the clone'})"
        return f"{head} ({self.kind}, commit {self.commit})"


def remote_refs(repo: str) -> dict[str, str]:
    """`refs/…` name → commit, annotated tags peeled to their commit."""
    try:
        listing = str(git.Git().ls_remote(repo))
    except git.GitCommandError as exc:
        raise UsageError(
            f"cannot read the repository {repo}: {exc.stderr.strip().splitlines()[-1] if exc.stderr else exc}",
            hint="check --repo (a URL or a local path) and the network",
        ) from exc
    return parse_ls_remote(listing)


def parse_ls_remote(listing: str) -> dict[str, str]:
    """`git ls-remote` output as `refs/…` name → commit, annotated tags peeled (`^{}` lines)."""
    refs: dict[str, str] = {}
    for line in listing.splitlines():
        sha, _, name = line.partition("\t")
        if name.endswith("^{}"):
            refs[name[:-3]] = sha  # the peeled commit wins over the tag object
        else:
            refs.setdefault(name, sha)
    return refs


def releases(refs: Mapping[str, str]) -> dict[Version, str]:
    """Release version → tag name, from the `vX.Y.Z` tags."""
    found = {}
    for name in refs:
        tag = name.removeprefix("refs/tags/")
        match = RELEASE_TAG.fullmatch(tag)
        if name.startswith("refs/tags/") and match:
            found[Version(match[1])] = tag
    return found


def resolve_ref(repo: str, ref: str, refs: Mapping[str, str] | None = None) -> ResolvedRef:
    """The tag, branch or commit `ref` names in `repo`; bad input when it names none."""
    refs = remote_refs(repo) if refs is None else refs
    tags = releases(refs)
    if ref == LATEST:
        if not tags:
            raise UsageError(f"--ref latest: {repo} has no release tag (vX.Y.Z)", hint="name a tag or branch")
        newest = max(tags)
        return ResolvedRef(ref, tags[newest], "tag", refs[f"refs/tags/{tags[newest]}"], newest)
    if f"refs/tags/{ref}" in refs:
        match = RELEASE_TAG.fullmatch(ref)
        return ResolvedRef(ref, ref, "tag", refs[f"refs/tags/{ref}"], Version(match[1]) if match else None)
    if f"refs/heads/{ref}" in refs:
        last = max(tags, default=None)
        after = Version(f"{last.major}.{last.minor}.{last.micro + 1}.dev0") if last else None
        return ResolvedRef(ref, ref, "branch", refs[f"refs/heads/{ref}"], after)
    if 7 <= len(ref) <= 40 and all(c in "0123456789abcdef" for c in ref.lower()):
        return ResolvedRef(ref, ref, "commit", ref if len(ref) == 40 else None, None)
    shown = ", ".join(tags[v] for v in sorted(tags)[-5:]) or "none"
    raise UsageError(
        f"--ref '{ref}' is not a tag, branch or commit of {repo}", hint=f"--ref latest, --ref main, or one of: {shown}"
    )


def ref_kind(repo: str, ref: str) -> str:
    """'name' when the remote has a tag or branch called `ref`, 'commit' when it looks like a
    commit id (ls-remote cannot confirm those), else a bad-input error before anything runs."""
    return "commit" if resolve_ref(repo, ref).kind == "commit" else "name"


def clone_url(repo: str) -> str:
    """Local paths go through file:// so `--depth` works (git ignores it for plain paths)."""
    return repo if "://" in repo or repo.startswith("git@") else Path(repo).as_uri()


def read_recipe_files(repo: str, ref: str, dest: Path) -> None:
    """Check out only `RECIPE_PATHS` of `ref` into `dest`: a plan or `invoke recipe` reads a
    release's facts without cloning its whole tree (blobs are fetched lazily where the server
    supports partial clones)."""
    try:
        work = git.Repo.init(dest)
        try:
            work.git.fetch("--depth=1", "--filter=blob:none", clone_url(repo), ref)
        except git.GitCommandError:
            # A short commit id is no ref a server can send by name: fetch the history (its
            # commits only; trees and files come lazily) and find it there.
            work.git.fetch("--filter=tree:0", clone_url(repo), "+refs/heads/*:refs/remotes/origin/*")
            try:
                commit = work.git.rev_parse("--verify", f"{ref}^{{commit}}")
            except git.GitCommandError:
                raise UsageError(f"--ref '{ref}' is not a commit of {repo}", hint="check the commit id") from None
            work.git.update_ref("FETCH_HEAD", commit)
        present = set(work.git.ls_tree("--name-only", "FETCH_HEAD").splitlines())
        present |= set(work.git.ls_tree("--name-only", "FETCH_HEAD", "tools/").splitlines())
        paths = [p for p in RECIPE_PATHS if p in present]
        if paths:  # a tree with none of them has no facts to read, and that is what it reports
            work.git.checkout("FETCH_HEAD", "--", *paths)
    except git.GitCommandError as exc:
        raise UsageError(
            f"cannot read {ref} of {repo}: {(exc.stderr or str(exc)).strip().splitlines()[-1]}",
            hint="check --repo, --ref and the network",
        ) from exc
