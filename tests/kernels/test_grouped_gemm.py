"""Triton grouped GEMM vs the torch reference.

tests/conftest.py sets TRITON_INTERPRET=1 before triton is imported, so by default these run on
the CPU interpreter (small shapes, large blocks: its cost is per program instance). Run with
TRITON_INTERPRET=0 on a CUDA machine to run the same checks compiled, plus the `gpu` tests.
"""

import pytest

from kernels.backends import DEVICE, needs_backend, needs_compiled_gpu, torch

from moesim.kernels.grouped_gemm import align_by_expert, grouped_gemm, swiglu_expert_mlp
from moesim.kernels.reference import grouped_gemm_ref, swiglu_expert_mlp_ref


DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (rtol, atol): fp32 accumulation everywhere, so 16-bit errors are about one output rounding.
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}

# Odd shapes: K and N are not multiples of any block; experts 1 and 4 receive no token.
T, K, N, E = 37, 48, 80, 5
USED_EXPERTS = torch.tensor([0, 2, 3])


def _routing(t: int, top_k: int, gen: torch.Generator) -> tuple:
    """expert_ids [t, top_k] over USED_EXPERTS (distinct per token) and softmax gates [t, top_k]."""
    choice = torch.stack([torch.randperm(len(USED_EXPERTS), generator=gen)[:top_k] for _ in range(t)])
    gate = torch.softmax(torch.randn(t, top_k, generator=gen), dim=1)
    return USED_EXPERTS[choice].to(DEVICE), gate.to(DEVICE)


def _randn(*shape, dtype, gen, scale=1.0):
    return (torch.randn(*shape, generator=gen) * scale).to(device=DEVICE, dtype=dtype)


def _assert_close(out, ref, dtype):
    rtol, atol = TOL[dtype]
    assert out.dtype == ref.dtype and out.shape == ref.shape
    torch.testing.assert_close(out.float(), ref.float(), rtol=rtol, atol=atol)


@needs_backend
@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_grouped_gemm_matches_reference(dtype, top_k):
    gen = torch.Generator().manual_seed(top_k)
    x = _randn(T, K, dtype=dtype, gen=gen)
    w = _randn(E, K, N, dtype=dtype, gen=gen, scale=K ** -0.5)
    ids, gate = _routing(T, top_k, gen)
    out = grouped_gemm(x, w, ids, gate, input_precision="ieee")
    _assert_close(out, grouped_gemm_ref(x, w, ids, gate), dtype)


@needs_backend
def test_grouped_gemm_small_blocks_loop_over_k_and_n():
    """block_k=32 over K=48 (2 steps, the last partial), 3 N-blocks, several M-blocks per expert."""
    gen = torch.Generator().manual_seed(7)
    x = _randn(T, K, dtype=torch.float32, gen=gen)
    w = _randn(E, K, N, dtype=torch.float32, gen=gen)
    ids, gate = _routing(T, 2, gen)
    out = grouped_gemm(x, w, ids, gate, block_m=16, block_n=32, block_k=32, input_precision="ieee")
    _assert_close(out, grouped_gemm_ref(x, w, ids, gate), torch.float32)


@needs_backend
def test_grouped_gemm_without_gate_sums_choices():
    gen = torch.Generator().manual_seed(3)
    x = _randn(T, K, dtype=torch.float32, gen=gen)
    w = _randn(E, K, N, dtype=torch.float32, gen=gen)
    ids, _ = _routing(T, 2, gen)
    out = grouped_gemm(x, w, ids, None, input_precision="ieee")
    expected = torch.stack([x[t] @ w[ids[t, 0]] + x[t] @ w[ids[t, 1]] for t in range(T)])
    _assert_close(out, expected, torch.float32)
    _assert_close(out, grouped_gemm_ref(x, w, ids), torch.float32)


@needs_backend
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_swiglu_expert_mlp_matches_reference(dtype):
    H, F = 48, 80
    gen = torch.Generator().manual_seed(11)
    x = _randn(T, H, dtype=dtype, gen=gen)
    w_gate = _randn(E, H, F, dtype=dtype, gen=gen, scale=H ** -0.5)
    w_up = _randn(E, H, F, dtype=dtype, gen=gen, scale=H ** -0.5)
    w_down = _randn(E, F, H, dtype=dtype, gen=gen, scale=F ** -0.5)
    ids, gate = _routing(T, 2, gen)
    out = swiglu_expert_mlp(x, w_gate, w_up, w_down, ids, gate, input_precision="ieee")
    # The kernel rounds the intermediate silu(g) * u to the input dtype; the reference does not.
    rtol, atol = TOL[dtype]
    ref = swiglu_expert_mlp_ref(x, w_gate, w_up, w_down, ids, gate)
    torch.testing.assert_close(out.float(), ref.float(), rtol=2 * rtol, atol=2 * atol)
    assert out.dtype == dtype


@needs_backend
def test_empty_batch_returns_empty():
    x = torch.zeros(0, K, device=DEVICE)
    w = torch.zeros(E, K, N, device=DEVICE)
    ids = torch.zeros(0, 2, dtype=torch.int64, device=DEVICE)
    assert grouped_gemm(x, w, ids).shape == (0, N)


@pytest.mark.parametrize("block_m", [16, 64])
def test_align_by_expert_invariants(block_m):
    gen = torch.Generator().manual_seed(block_m)
    ids = torch.randint(0, 4, (37, 2), generator=gen)  # experts 4 and 5 of 6 get nothing
    ids[0, 0] = 3
    sorted_slots, block_expert, num_blocks = align_by_expert(ids, 6, block_m)
    num_slots = ids.numel()
    flat = ids.reshape(-1)

    assert sorted_slots.numel() == num_blocks * block_m and block_expert.numel() == num_blocks
    real = sorted_slots[sorted_slots != num_slots]
    assert torch.equal(torch.sort(real).values, torch.arange(num_slots, dtype=real.dtype))  # each slot once
    assert ((sorted_slots == num_slots) | (sorted_slots < num_slots)).all()  # padding is the sentinel

    counts = torch.bincount(flat, minlength=6)
    assert num_blocks == int(((counts + block_m - 1) // block_m).sum())
    assert set(block_expert.tolist()) == {e for e in range(6) if counts[e] > 0}
    assert torch.all(block_expert[1:] >= block_expert[:-1])  # grouped by expert
    for b in range(num_blocks):
        block = sorted_slots[b * block_m:(b + 1) * block_m]
        block = block[block != num_slots].long()
        assert block.numel() > 0 and (flat[block] == block_expert[b]).all()  # homogeneous
        assert torch.all(block[1:] > block[:-1])  # stable: slot order kept within an expert


def test_align_by_expert_is_deterministic():
    ids = torch.randint(0, 3, (50, 2), generator=torch.Generator().manual_seed(0))
    a, b = align_by_expert(ids, 3, 16), align_by_expert(ids, 3, 16)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]


def test_align_by_expert_rejects_out_of_range_ids():
    with pytest.raises(ValueError, match="expert_ids"):
        align_by_expert(torch.tensor([[0], [5]]), 5, 16)


@pytest.mark.parametrize("bad", [15, 24, 8, 0])
@pytest.mark.parametrize("name", ["block_m", "block_n", "block_k"])
def test_block_sizes_must_be_powers_of_two_at_least_16(name, bad):
    x, w = torch.zeros(4, 16), torch.zeros(2, 16, 16)
    ids = torch.zeros(4, 1, dtype=torch.int64)
    with pytest.raises(ValueError, match=f"{name} must be a power of 2 >= 16"):
        grouped_gemm(x, w, ids, **{name: bad})


def test_rejects_bad_dtypes_and_shapes():
    ids = torch.zeros(4, 1, dtype=torch.int64)
    with pytest.raises(ValueError, match="dtype"):
        grouped_gemm(torch.zeros(4, 16, dtype=torch.float64), torch.zeros(2, 16, 16, dtype=torch.float64), ids)
    with pytest.raises(ValueError, match="differs from x dtype"):
        grouped_gemm(torch.zeros(4, 16), torch.zeros(2, 16, 16, dtype=torch.float16), ids)
    with pytest.raises(ValueError, match="expected x"):
        grouped_gemm(torch.zeros(4, 16), torch.zeros(2, 32, 16), ids)
    with pytest.raises(ValueError, match="expert_ids"):
        grouped_gemm(torch.zeros(4, 16), torch.zeros(2, 16, 16), torch.zeros(5, 1, dtype=torch.int64))
    with pytest.raises(ValueError, match="gate shape"):
        grouped_gemm(torch.zeros(4, 16), torch.zeros(2, 16, 16), ids, torch.ones(4, 2))


# --- compiled on a GPU (run with TRITON_INTERPRET=0) -------------------------------------------

@pytest.mark.gpu
@needs_compiled_gpu
@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gpu_autotuned_matches_torch(dtype, top_k):
    gen = torch.Generator().manual_seed(0)
    t, k_dim, n_dim, experts = 1000, 512, 768, 8
    x = _randn(t, k_dim, dtype=dtype, gen=gen)
    w = _randn(experts, k_dim, n_dim, dtype=dtype, gen=gen, scale=k_dim ** -0.5)
    ids = torch.stack([torch.randperm(experts - 1, generator=gen)[:top_k] for _ in range(t)]).to(DEVICE)
    gate = torch.softmax(torch.randn(t, top_k, generator=gen), dim=1).to(DEVICE)
    ref = grouped_gemm_ref(x, w, ids, gate)
    # Default fp32 path is tf32 (10-bit mantissa inputs): loose; 16-bit: a couple of output ulps.
    tol = {torch.float32: 1e-2, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
    torch.testing.assert_close(grouped_gemm(x, w, ids, gate).float(), ref.float(), rtol=tol, atol=tol)
    if dtype == torch.float32:
        exact = grouped_gemm(x, w, ids, gate, input_precision="ieee")
        torch.testing.assert_close(exact, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@needs_compiled_gpu
def test_gpu_swiglu_matches_torch():
    gen = torch.Generator().manual_seed(1)
    t, h, f, experts = 512, 256, 512, 8
    dtype = torch.bfloat16
    x = _randn(t, h, dtype=dtype, gen=gen)
    w_gate = _randn(experts, h, f, dtype=dtype, gen=gen, scale=h ** -0.5)
    w_up = _randn(experts, h, f, dtype=dtype, gen=gen, scale=h ** -0.5)
    w_down = _randn(experts, f, h, dtype=dtype, gen=gen, scale=f ** -0.5)
    ids = torch.stack([torch.randperm(experts, generator=gen)[:2] for _ in range(t)]).to(DEVICE)
    gate = torch.softmax(torch.randn(t, 2, generator=gen), dim=1).to(DEVICE)
    out = swiglu_expert_mlp(x, w_gate, w_up, w_down, ids, gate)
    ref = swiglu_expert_mlp_ref(x, w_gate, w_up, w_down, ids, gate)
    torch.testing.assert_close(out.float(), ref.float(), rtol=5e-2, atol=5e-2)
