"""Shared test set-up: Triton kernels run under the CPU interpreter when no GPU is present."""
import os

import torch

if not torch.cuda.is_available():
    # Must be set before triton is imported anywhere.
    os.environ.setdefault("TRITON_INTERPRET", "1")
