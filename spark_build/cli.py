"""The boundary between invoke and the library: resolve options, run, turn errors into exit codes.

Every `SparkBuildError` becomes one clean message and its exit code (bad input 2, failure 1,
interrupted 130); a traceback only with `--debug`.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from rich.console import Console

from spark_build import config as options
from spark_build.errors import SparkBuildError


def console() -> Console:
    return Console(highlight=False, soft_wrap=False)


def guarded(action: Callable[[], int], *, debug: bool) -> int:
    """Run `action`, printing a failure as one short message; returns the exit code."""
    try:
        return action()
    except SparkBuildError as exc:
        if debug:
            traceback.print_exc()
        for line in exc.lines():
            print(line, file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def build_vllm(cli: Mapping[str, Any], file: Mapping[str, Any] | None) -> int:
    from spark_build.build import build

    debug = bool(cli.get("debug"))

    def action() -> int:
        cfg = options.resolve(cli, file)
        return build(cfg, console())

    return guarded(action, debug=debug)
