"""spark_example: CUDA kernels behind vLLM's build interface, for spark-build's tests.

`_C` is imported eagerly on purpose: the module links the CUDA runtime
statically and must import on a host without a GPU or driver, and an import
failure here is exactly what spark-build's validate step exists to catch.
"""

from importlib.metadata import PackageNotFoundError, version

from spark_example import _C

try:
    __version__ = version("spark-example")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "unknown"

__all__ = ["_C", "__version__"]
