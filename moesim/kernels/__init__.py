"""Expert (MoE) compute kernels: a Triton grouped GEMM and a naive torch reference.

Import the submodules directly; this package imports neither torch nor triton so that
``import moesim`` stays light (DESIGN rule 1):

- ``moesim.kernels.reference``: torch-only oracles (``grouped_gemm_ref``, ``swiglu_expert_mlp_ref``).
- ``moesim.kernels.grouped_gemm``: Triton kernels (``align_by_expert``, ``grouped_gemm``,
  ``swiglu_expert_mlp``). Under ``TRITON_INTERPRET=1`` that variable must be set before
  this module is imported.
"""
