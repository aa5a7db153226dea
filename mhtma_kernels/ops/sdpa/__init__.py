"""The `sdpa` backend: PyTorch's fused attention with the additive-bias identity (bias: CUDA and the entry
point) and the CPU flash op (flash_cpu, op)."""
