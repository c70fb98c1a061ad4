"""What a completion changed in an official wheel, and whether the rebuilt extensions fit the
torch they will load with.

Usage: abi_check.py OFFICIAL.whl COMPLETED.whl PYTHON

1. Every file of the two wheels compared byte for byte (the dist-info folder named by version).
2. For each extension that differs: its NEEDED list against the official file's, and its
   undefined dynamic symbols, each looked up in the libraries it links, found where PYTHON's
   torch and NVIDIA packages keep theirs, then in the system's. A symbol no linked library
   defines is ABI drift (a torch other than the one it was built against); the driver's are
   listed apart on a host without one, and only where the file links `libcuda.so.1`.
Exit 0 when only the rebuilt extensions, METADATA and RECORD differ, the NEEDED lists are the
official files', and no symbol is unresolved.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


def _members(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as z:
        return {re.sub(r"^[^/]+\.dist-info/", "<dist-info>/", n): z.read(n) for n in z.namelist()}


def _lines(argv: list[str]) -> list[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.splitlines()


def _needed(lib: Path) -> list[str]:
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", "\n".join(_lines(["readelf", "-d", str(lib)])))


def _symbols(lib: Path, *, defined: bool) -> set[str]:
    """Dynamic symbols by name (version tags dropped). Undefined ones leave out the weak (`w`,
    `v`: `__gmon_start__`, the TM clone tables), which need no definition, and Python's C API
    (`Py*`), which the interpreter that imports the extension defines."""
    flag = "--defined-only" if defined else "--undefined-only"
    found = set()
    for line in _lines(["nm", "-D", flag, str(lib)]):
        parts = line.split()
        if not parts or (not defined and (parts[-2] in ("w", "v") or parts[-1].startswith(("Py", "_Py")))):
            continue
        found.add(parts[-1].split("@")[0])
    return found


def _library_dirs(python: str) -> list[Path]:
    probe = "import site, sys; print('\\n'.join(site.getsitepackages()))"
    sites = [Path(p) for p in _lines([python, "-c", probe])]
    dirs = [s / "torch" / "lib" for s in sites] + [d for s in sites for d in sorted(s.glob("nvidia/*/lib"))]
    system = {Path(m) for m in re.findall(r"=> (\S+)", "\n".join(_lines(["ldconfig", "-p"])))}
    return [d for d in dirs if d.is_dir()] + sorted({p.parent for p in system})


def main(official: Path, completed: Path, python: str) -> int:
    old, new = _members(official), _members(completed)
    same = sorted(n for n in old if new.get(n) == old[n])
    changed = sorted(n for n in new if n in old and new[n] != old[n])
    only = sorted(set(old) ^ set(new))
    print(f"files: {len(old)} in the official wheel, {len(same)} byte-identical in the completed one")
    print(f"changed: {', '.join(changed)}; only in one: {', '.join(only) or 'none'}")
    extensions = [n for n in changed if n.endswith(".so")]
    allowed = {*extensions, "<dist-info>/METADATA", "<dist-info>/RECORD"}
    ok = not only and set(changed) <= allowed
    dirs = _library_dirs(python)
    with tempfile.TemporaryDirectory() as scratch:
        for name in extensions:
            lib = Path(scratch) / Path(name).name
            lib.write_bytes(new[name])
            undefined = _symbols(lib, defined=False)
            left = set(undefined)
            report = []
            needed_new = _needed(lib)
            shipped = Path(scratch) / f"official-{Path(name).name}"
            shipped.write_bytes(old[name])
            needed_old = _needed(shipped)
            same = "the same as" if needed_new == needed_old else f"NOT the same as ({needed_old})"
            print(f"{name}: NEEDED {needed_new}, {same} the official file's")
            ok = ok and needed_new == needed_old
            for needed in needed_new:
                found = next((d / needed for d in dirs if (d / needed).exists()), None)
                if found is None:
                    report.append(f"{needed}: not on this host")
                    continue
                hit = left & _symbols(found, defined=True)
                left -= hit
                report.append(f"{needed}: {len(hit)} ({found.parent})")
            # The driver's symbols are bound by libcuda.so.1 at load: only where the file links it.
            linked = "libcuda.so.1" in needed_new
            driver = {s for s in left if s.startswith("cu") and s[2:3].isupper()} if linked else set()
            print(f"{name}: {len(undefined)} undefined symbols; resolved by " + "; ".join(report))
            if driver:
                print(f"  {len(driver)} driver API symbols ({', '.join(sorted(driver)[:4])}…) left to libcuda.so.1")
            unresolved = sorted(left - driver)
            print(f"  unresolved: {len(unresolved)}" + (f" — {', '.join(unresolved[:10])}" if unresolved else ""))
            ok = ok and not unresolved
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]))
