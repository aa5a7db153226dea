"""What the launcher knows about the GPU it launches on: learned once per device.

For a CUDA tensor, from torch.cuda.get_device_properties(its device index), so that every figure is of that
one device:

    compute capability   major * 10 + minor   (90 for sm_90)
    shared memory        shared_memory_per_block_optin: what one block may opt in to (227 KB on sm_90/sm_100,
                         163 KB on sm_80, 99 KB on sm_86/89/120)
    SM count             multi_processor_count
    name                 name

Without a CUDA tensor, from Triton's active driver (its current target and device properties: how the compile
report emulates other GPUs), else torch's current CUDA device. Every sizing decision of the launcher
(candidate tiles, the fixed choice, resident backward rows, TMA, the refusal) reads a `Device`. Only where
there is no CUDA device at all (CPU, Triton's interpreter) the model is `REFERENCE`, the sm_90 GPU the kernels
were first sized for, so that the candidate lists on CPU are those of an H100.
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


def _from_torch(index: int) -> Device:
    """CUDA device `index` as torch reports it (capability, shared memory and SMs all of that one device)."""
    properties = torch.cuda.get_device_properties(index)
    return Device(properties.name, properties.major * 10 + properties.minor,
                  int(properties.shared_memory_per_block_optin), int(properties.multi_processor_count))


def _from_driver() -> Device:
    """The current device of Triton's active driver (a real one, or an emulated GPU of the compile report)."""
    from triton.runtime import driver

    active = driver.active
    arch = int(active.get_current_target().arch)
    properties = active.utils.get_device_properties(active.get_current_device())
    return Device(f"sm_{arch}", arch, int(properties["max_shared_mem"]), int(properties["multiprocessor_count"]))


def current(tensor: torch.Tensor | None = None) -> Device:
    """The device model of `tensor`'s GPU, learned on the first call per device and kept.

    A CUDA tensor: its own device as torch reports it. Otherwise Triton's active driver's current device
    (emulated GPUs answer there); where that driver does not answer, torch's current CUDA device, and only
    where there is no CUDA at all (CPU, the interpreter) `REFERENCE`."""
    if tensor is not None and tensor.device.type == "cuda":
        index = tensor.device.index if tensor.device.index is not None else torch.cuda.current_device()
        if index not in _KNOWN:
            _KNOWN[index] = _from_torch(index)
        return _KNOWN[index]
    if None not in _KNOWN:
        try:
            _KNOWN[None] = _from_driver()
        except Exception:  # noqa: BLE001 - no CUDA driver, the interpreter, a driver API triton changed
            _KNOWN[None] = _from_torch(torch.cuda.current_device()) if torch.cuda.is_available() else REFERENCE
    return _KNOWN[None]


def forget() -> None:
    """Ask again on the next call (for the compile report, which swaps Triton's driver, and its tests)."""
    _KNOWN.clear()
