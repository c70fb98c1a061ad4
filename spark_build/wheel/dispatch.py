"""Which of vLLM's compiled extensions a GPU ever runs: vLLM's own dispatch, as data.

vLLM's official CUDA wheels carry extensions for GPUs other than the one at hand: FA3 only for
Hopper, FlashMLA and DeepSelect only for Hopper and Blackwell datacenter parts. Judged like the
rest, they make every official wheel "fail" on a DGX Spark although vLLM never loads their
kernels there. So the arch audit asks this table first: an extension the target never
dispatches to is listed apart and cannot fail the audit; one it does dispatch to must run.

Read from vLLM 0.33.0's Python sources (the files named in each row); an extension that is not
in the table is taken as used everywhere, which can only make the audit stricter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from spark_build.arch.compat import ComputeCapability


@dataclass(frozen=True)
class Dispatch:
    """The GPUs vLLM sends an extension's kernels to: these majors (`is_device_capability_family`),
    or every GPU at least `at_least` (`has_device_capability`); `where` names the deciding code."""

    where: str
    majors: frozenset[int] = frozenset()
    at_least: ComputeCapability | None = None

    def used_on(self, gpu: ComputeCapability) -> bool:
        if self.at_least is not None and gpu >= self.at_least:
            return True
        return gpu.major in self.majors

    def describe(self) -> str:
        """`9.x only` / `10.x and later`, for the table and the notes."""
        if self.at_least is not None:
            return f"{self.at_least} and later"
        return " and ".join(f"{m}.x" for m in sorted(self.majors)) + " only"


# Keyed by the extension's path in the wheel without its suffix, so the rows cannot match another
# project's `_C`. qutlass is in the table to record that it *is* used on 12.x: FP-Quant
# (`fp_quant.py`, get_min_capability 100) and the compressed-tensors NVFP4+Hadamard scheme
# (`transform/linear.py`, has_device_capability(100)) dispatch to it on every GPU from 10.0 up.
VLLM_DISPATCH: Mapping[str, Dispatch] = {
    "vllm/vllm_flash_attn/_vllm_fa3_C": Dispatch(
        "vllm/vllm_flash_attn/flash_attn_interface.py: _is_fa3_supported (is_device_capability_family(90))",
        majors=frozenset({9}),
    ),
    "vllm/_flashmla_C": Dispatch(
        "vllm/v1/attention/ops/flashmla.py: is_flashmla_{dense,sparse}_supported (families 90, 100)",
        majors=frozenset({9, 10}),
    ),
    "vllm/_flashmla_extension_C": Dispatch(
        "vllm/v1/attention/ops/flashmla.py: is_flashmla_{dense,sparse}_supported (families 90, 100)",
        majors=frozenset({9, 10}),
    ),
    "vllm/_deepselect_C": Dispatch(
        "vllm/model_executor/layers/sparse_mqa_indexer.py, indexer_topk.py (is_device_capability_family(100))",
        majors=frozenset({10}),
    ),
    "vllm/_qutlass_C": Dispatch(
        "vllm/model_executor/layers/quantization/fp_quant.py (min capability 100), "
        "compressed_tensors/transform/linear.py (has_device_capability(100))",
        at_least=ComputeCapability(10, 0),
    ),
}


def dispatch_of(extension_path: str, table: Mapping[str, Dispatch]) -> Dispatch | None:
    """The row for `vllm/_qutlass_C.abi3.so` (the suffix after the first dot is dropped)."""
    folder, _, name = extension_path.rpartition("/")
    stem = name.split(".", 1)[0]
    return table.get(f"{folder}/{stem}" if folder else stem)
