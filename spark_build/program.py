"""The installed `spark-build` command: invoke's `Program` over the checkout's tasks.py.

`invoke` finds tasks.py only in the folder it is started in (or above it); outside the checkout
it says "Can't find any collection named 'tasks'". `spark-build` runs the same tasks from any
folder: relative options (`--workdir work`) still mean the folder the user stands in.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from invoke import Config, Program

from spark_build.config import PROJECT_ROOT


class SparkBuildConfig(Config):
    """invoke's configuration with the checkout as the place tasks.py (and its invoke.yaml) is found."""

    @staticmethod
    def global_defaults() -> dict[str, Any]:
        defaults = Config.global_defaults()
        defaults["tasks"]["search_root"] = str(PROJECT_ROOT)
        return defaults


def _version() -> str:
    try:
        return version("spark-build")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


program = Program(name="spark-build", binary="spark-build", version=_version(), config_class=SparkBuildConfig)
