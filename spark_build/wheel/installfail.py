"""Why an install into the validate venv failed, read from uv's or pip's own words.

Two causes mean opposite things. A requirement the index does not have (`vllm==0.34.0 depends
on flashinfer-python==0.7.3`, which the package index lacked for days) is a finding about the
wheel: it cannot be installed from here. An index that cannot be reached says nothing about the
wheel, only about this host's network, and must never refuse one. So the resolver's message is
matched against a table of signatures, unreachable first: pip, cut off from its index, also ends
with "Could not find a version that satisfies the requirement".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# This host's network or its index: the request itself failed (uv's words, then pip's).
_UNREACHABLE = re.compile(
    r"Request failed after \d+ retries|error sending request for url|tcp connect error|dns error"
    r"|Connection refused|Network is unreachable|Failed to establish a new connection"
    r"|Temporary failure in name resolution|NewConnectionError|ConnectTimeoutError|ReadTimeoutError"
    r"|Could not fetch URL"
)
# The address it could not reach, where the message gives one.
_UNREACHED_URL = re.compile(r"(?:Failed to fetch: `?|for url \(|Could not fetch URL )(?P<url>[^\s`)]+?)[`):]?(?:\s|$)")

# A requirement nowhere to be had, and what asked for it (uv's, then pip's resolver).
_MISSING = (
    re.compile(r"there is no version of (?P<req>[^\s,]+)"),
    re.compile(r"(?P<req>[^\s,]+) was not found in the (?:package registry|provided package locations)"),
    re.compile(r"only (?P<have>[^\s,]+) (?:is|are) available and (?P<by>[^\s,]+) depends on (?P<req>[^\s,]+)"),
    re.compile(r"Could not find a version that satisfies the requirement (?P<req>\S+)(?: \(from (?P<by>[^)]+)\))?"),
    re.compile(r"No matching distribution found for (?P<req>[^\s,]+)"),
)
_DEPENDS_ON = re.compile(r"(?P<by>[^\s,]+) depends on (?P<req>[^\s,]+)")


@dataclass(frozen=True)
class InstallFailure:
    """What an install's output says went wrong; both empty when it names no known cause."""

    unreachable: str | None  # the line (or URL) that shows the index could not be reached
    missing: tuple[str, ...]  # requirements the index does not have, with what asked, if said


def read_install_failure(output: str) -> InstallFailure:
    """Read uv's or pip's message (the install's log, from its command line on)."""
    unreachable = _UNREACHABLE.search(output)
    if unreachable:
        url = _UNREACHED_URL.search(output)
        line = next(line.strip() for line in output.splitlines() if unreachable.group(0) in line)
        return InstallFailure(url["url"] if url else line, ())
    # "X was not found" names the project alone; the chain that asked for it has the version.
    chains = {_name(m["req"]): f"{m['by']} depends on {m['req']}" for m in _DEPENDS_ON.finditer(output)}
    missing: dict[str, str] = {}
    for pattern in _MISSING:
        for match in pattern.finditer(output):
            req, by = match["req"], match.groupdict().get("by")
            missing.setdefault(_name(req), chains.get(_name(req)) or (f"{by} depends on {req}" if by else req))
    return InstallFailure(None, tuple(missing.values()))


def _name(requirement: str) -> str:
    """`flashinfer-python==0.7.3` → `flashinfer-python`, normalised as the index does."""
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    return re.sub(r"[-_.]+", "-", match.group(0) if match else requirement).lower()
