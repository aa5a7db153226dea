"""What the launcher knows about the GPU it launches on: learned once per device from Triton's driver.

    compute capability   driver.active.get_current_target().arch   (90 for sm_90)
    shared memory        driver.active.utils.get_device_properties(index)["max_shared_mem"]: what one block
                         may opt in to (227 KB on sm_90/sm_100, 163 KB on sm_80, 99 KB on sm_86/89/120)
    SM count             the same properties' "multiprocessor_count"
    name                 torch.cuda.get_device_name(index), or "sm_<arch>" where torch cannot say

Every sizing decision of the launcher (candidate tiles, the fixed choice, resident backward rows, TMA) reads
a `Device`. Where no driver answers (CPU, Triton's interpreter) the model is `REFERENCE`, the sm_90 GPU the
kernels were first sized for, so that the candidate lists on CPU are those of an H100.
"""
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Device:
    """One GPU as the launcher sizes for it."""

    name: str
    arch: int  # compute capability as major * 10 + minor
    shared_bytes: int  # opt-in shared memory per block
    sms: int

    @property
    def kind(self) -> str:
        """The device kind that candidate lists and autotuning results are kept apart by."""
        return f"sm_{self.arch}:{self.shared_bytes}"

    @property
    def mma(self) -> str:
        """The tensor-core instruction Triton compiles dots to: wgmma on sm_90, tcgen05 on sm_100 (sm_100 to
        sm_119), mma.sync on sm_80/86/89 and the consumer Blackwell sm_120."""
        if 100 <= self.arch < 120:
            return "tcgen05"
        return "wgmma" if 90 <= self.arch < 100 else "mma.sync"

    def kv_buffers(self, num_stages: int) -> int:
        """The k/v tile buffers a loop pipelined over num_stages keeps in shared memory: Triton's cp.async
        pipeline for mma.sync keeps num_stages - 1 (the compiler's figures on sm_80/86/89/120), the wgmma and
        tcgen05 pipelines num_stages."""
        return num_stages - 1 if self.mma == "mma.sync" else num_stages

    @property
    def tensor_memory_columns(self) -> int | None:
        """Columns of 32-bit tensor memory per SM that tcgen05 accumulators live in (128 lanes x 512 columns);
        None where dots accumulate in registers."""
        return 512 if self.mma == "tcgen05" else None

    def describe(self) -> str:
        return f"{self.name} (sm_{self.arch}, {self.shared_bytes // 1024} KB shared memory per block)"


REFERENCE = Device("sm_90 (no device: the reference sizes)", 90, 232448, 132)
_KNOWN: dict = {}


def _ask(index: int) -> Device:
    from triton.runtime import driver

    active = driver.active
    arch = int(active.get_current_target().arch)
    properties = active.utils.get_device_properties(index)
    try:
        name = torch.cuda.get_device_name(index)
    except (AssertionError, RuntimeError):  # a driver without torch's CUDA (an emulated GPU)
        name = f"sm_{arch}"
    return Device(name, arch, int(properties["max_shared_mem"]), int(properties["multiprocessor_count"]))


def current(tensor: torch.Tensor | None = None) -> Device:
    """The device model of `tensor`'s GPU (the driver's current device when None or not on CUDA), learned on
    the first call per device index; `REFERENCE` where no driver answers."""
    index = tensor.device.index if tensor is not None and tensor.device.type == "cuda" else None
    if index not in _KNOWN:
        try:
            from triton.runtime import driver

            _KNOWN[index] = _ask(driver.active.get_current_device() if index is None else index)
        except Exception:  # noqa: BLE001 - no CUDA driver, the interpreter, no triton: the reference sizes
            _KNOWN[index] = REFERENCE
    return _KNOWN[index]


def forget() -> None:
    """Ask the driver again on the next call (for tools that swap Triton's driver)."""
    _KNOWN.clear()
