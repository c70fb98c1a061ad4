"""Drop the torch pins so a --no-build-isolation build keeps the torch already installed.

Behaves like vLLM 0.13.0's script of the same name: it rewrites
requirements/**/*.txt, requirements/**/*.in and pyproject.toml in place and
prints every line it removes.  By default any line that mentions torch goes
(comments included); with --prefix only lines that start with a torch,
torchvision or torchaudio requirement do.
"""

from __future__ import annotations

import argparse
import glob
import sys

# Requirement lines (requirements files) and TOML strings (pyproject.toml).
TORCH_REQUIREMENT_PREFIXES = (
    "torch=",
    "torchvision=",
    "torchaudio=",
    '"torch =',
    '"torchvision =',
    '"torchaudio =',
)


def files_to_rewrite() -> list[str]:
    return [
        *sorted(glob.glob("requirements/**/*.txt", recursive=True)),
        *sorted(glob.glob("requirements/**/*.in", recursive=True)),
        "pyproject.toml",
    ]


def drops(line: str, prefix_only: bool) -> bool:
    text = line.strip().lower()
    if prefix_only:
        return text.startswith(TORCH_REQUIREMENT_PREFIXES)
    return "torch" in text


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--prefix",
        action="store_true",
        help="drop only lines that start with a torch/torchvision/torchaudio requirement",
    )
    args = parser.parse_args(argv)

    for path in files_to_rewrite():
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
        kept = [line for line in lines if not drops(line, args.prefix)]
        if len(kept) == len(lines):
            continue
        for line in lines:
            if drops(line, args.prefix):
                print(f">>> removed from {path}: {line.strip()}")
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(kept)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
