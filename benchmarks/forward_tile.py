"""Timing the forward candidates side by side (benchmarks.gpu_check): every forward launch at one tile."""
import contextlib

from mhtma_kernels.ops.triton import launcher


@contextlib.contextmanager
def forward_tile(tile):
    """Inside, every forward launch of the triton op uses `tile` (a ForwardTile for the head dims at hand, or a
    version 2 TileConfig) instead of the autotuner's or the fixed choice; the backward is unaffected."""
    launch = launcher.launch_forward

    def launch_at_tile(q, k, v, key_valid_u8, temp, lambda_m, config, bounded=False):
        fixed = launcher.KernelConfig(fwd=tile, dkdv=None, dq=None)
        return launch(q, k, v, key_valid_u8, temp, lambda_m, fixed, bounded)

    launcher.launch_forward = launch_at_tile  # the op calls launcher.launch_forward by name
    try:
        yield tile
    finally:
        launcher.launch_forward = launch
