"""The `chunked` backend: the query-chunked GEMM path (gemm), its Triton row steps (row_kernels) and its
custom op (op)."""
