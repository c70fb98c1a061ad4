"""`--ref` as the repository answers it: `latest`, `main`, tags, commits (ls-remote's answer given)."""

from __future__ import annotations

import pytest

from spark_build.errors import UsageError
from spark_build.upstream.refs import parse_ls_remote, resolve_ref
from spark_build.upstream.versions import version_from_tag

LS_REMOTE = "\n".join(
    f"{sha}\t{name}"
    for sha, name in [
        ("a" * 40, "HEAD"),
        ("a" * 40, "refs/heads/main"),
        ("1" * 40, "refs/tags/v0.13.0"),
        ("f" * 40, "refs/tags/v0.33.0"),  # an annotated tag: the tag object…
        ("3" * 40, "refs/tags/v0.33.0^{}"),  # …and the commit it names
        ("4" * 40, "refs/tags/v0.34.0rc1"),
    ]
)
REFS = parse_ls_remote(LS_REMOTE)


def test_latest_is_the_newest_final_release_tag_peeled_to_its_commit() -> None:
    latest = resolve_ref("repo", "latest", REFS)
    assert (latest.name, latest.commit, str(latest.version)) == ("v0.33.0", "3" * 40, "0.33.0")
    assert latest.describe() == f"latest → v0.33.0 (tag, commit {'3' * 40})"


def test_main_is_a_branch_versioned_as_the_release_after_the_newest() -> None:
    main = resolve_ref("repo", "main", REFS)
    assert (main.kind, main.commit, str(main.version)) == ("branch", "a" * 40, "0.33.1.dev0")


def test_a_commit_id_is_taken_as_given_and_its_commit_known_after_the_clone() -> None:
    short = resolve_ref("repo", "86f8f157", REFS)
    assert (short.kind, short.commit, short.version) == ("commit", None, None)
    assert short.describe() == "86f8f157 (a commit id; the full id is known after the clone)"


def test_a_ref_the_repository_lacks_is_bad_input_naming_the_recent_release_tags() -> None:
    with pytest.raises(UsageError, match="--ref 'v9' is not a tag") as caught:
        resolve_ref("repo", "v9", REFS)
    assert "--ref latest, --ref main, or one of: v0.13.0, v0.33.0" in (caught.value.hint or "")


@pytest.mark.parametrize(
    ("describe", "version"),
    [("v0.13.0", "0.13.0"), ("v0.13.0-12-gabc1234", "0.13.0"), ("86f8f157cf82", None), ("0123abc", None)],
    ids=["tag", "after a tag", "commit starting with digits", "short commit"],
)
def test_only_a_tag_gives_a_version_never_a_commit_id(describe: str, version: str | None) -> None:
    found = version_from_tag(describe)
    assert (str(found) if found else None) == version
