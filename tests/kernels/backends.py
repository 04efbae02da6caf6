"""Where the kernel tests run: the Triton interpreter on CPU (TRITON_INTERPRET=1, the default tests/conftest.py
sets before triton is imported; the setdefault covers a file run alone and leaves TRITON_INTERPRET=0 alone) or
compiled on a CUDA GPU; the skip markers for each."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
CUDA = torch.cuda.is_available()
DEVICE = "cpu" if INTERPRETING else "cuda"
needs_backend = pytest.mark.skipif(not INTERPRETING and not CUDA, reason="needs TRITON_INTERPRET=1 or CUDA")
needs_compiled_gpu = pytest.mark.skipif(not CUDA or INTERPRETING, reason="needs CUDA and TRITON_INTERPRET unset")
