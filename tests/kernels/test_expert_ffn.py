"""expert_ffn (Triton forward and backward) vs plain torch autograd of the same per-row SwiGLU.

Runs in the Triton interpreter by default, compiled on a CUDA machine with TRITON_INTERPRET=0 (plus the `gpu`
test): tests/kernels/backends.py.
"""

import pytest

from kernels.backends import DEVICE, needs_backend, needs_compiled_gpu, torch

from moesim.kernels.expert_ffn import expert_ffn

E = 4
USED = torch.tensor([0, 2, 3])  # expert 1 never gets a row
FP32_TOL = dict(rtol=1e-4, atol=1e-5)


def _case(rows: int, hidden: int, ffn: int, dtype=torch.float32, seed: int = 0, used=USED):
    """x [rows, H], unsorted expert_of_row over `used`, weight lists, all leaves requiring grad."""
    gen = torch.Generator().manual_seed(seed)

    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(DEVICE, dtype).requires_grad_()

    x = leaf(rows, hidden)
    ids = used[torch.randint(0, len(used), (rows,), generator=gen)].to(DEVICE)
    w_gate = [leaf(hidden, ffn, scale=hidden ** -0.5) for _ in range(E)]
    w_up = [leaf(hidden, ffn, scale=hidden ** -0.5) for _ in range(E)]
    w_down = [leaf(ffn, hidden, scale=ffn ** -0.5) for _ in range(E)]
    dy = torch.randn(rows, hidden, generator=gen).to(DEVICE, dtype)
    return x, ids, w_gate, w_up, w_down, dy


def _torch_ffn(x, ids, w_gate, w_up, w_down):
    """The oracle: per row, its expert's weights gathered ([R, H, F]) and plain torch ops, in fp32."""
    def per_row(a, ws):
        return torch.bmm(a.float()[:, None], torch.stack(ws).float()[ids])[:, 0]
    h = torch.nn.functional.silu(per_row(x, w_gate)) * per_row(x, w_up)
    return per_row(h, w_down)


def _leaves(x, w_gate, w_up, w_down):
    return [x, *w_gate, *w_up, *w_down]


def _run_both(case, **kw):
    """(y, grads) of expert_ffn and of the oracle on detached copies of the same leaves."""
    x, ids, w_gate, w_up, w_down, dy = case
    y = expert_ffn(x, ids, w_gate, w_up, w_down, **kw)
    y.backward(dy)
    copies = [t.detach().clone().requires_grad_() for t in _leaves(x, w_gate, w_up, w_down)]
    cx, cg, cu, cd = copies[0], copies[1:1 + E], copies[1 + E:1 + 2 * E], copies[1 + 2 * E:]
    ref = _torch_ffn(cx, ids, cg, cu, cd)
    ref.backward(dy.float())
    # The oracle leaves an unused expert's grad None; expert_ffn must give zeros.
    ref_grads = [torch.zeros_like(c) if c.grad is None else c.grad for c in copies]
    return y, ref, [t.grad for t in _leaves(x, w_gate, w_up, w_down)], ref_grads


@needs_backend
@pytest.mark.parametrize(("rows", "hidden", "ffn", "blocks"), [
    (37, 32, 48, {}),                              # R not a multiple of 16, one N/K block each
    (100, 48, 40, {"block_n": 16, "block_k": 16}),  # several M-blocks per expert, partial K/N/P/Q tiles
    (5, 16, 16, {}),                               # fewer rows than one block
])
def test_forward_and_all_grads_match_torch_autograd(rows, hidden, ffn, blocks):
    case = _case(rows, hidden, ffn, seed=rows)
    assert not torch.all(case[1][1:] >= case[1][:-1])  # rows are not grouped by expert
    y, ref, grads, ref_grads = _run_both(case, block_m=16, input_precision="ieee", **blocks)
    assert y.dtype == torch.float32 and y.shape == (rows, hidden)
    torch.testing.assert_close(y, ref, **FP32_TOL)
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        assert g is not None and g.shape == r.shape, i
        torch.testing.assert_close(g, r, **FP32_TOL, msg=lambda m, i=i: f"leaf {i}: {m}")
    # Expert 1 has no rows: its weight grads are zeros, present all the same.
    for g in (grads[1 + 1], grads[1 + E + 1], grads[1 + 2 * E + 1]):
        assert torch.count_nonzero(g) == 0


@needs_backend
def test_empty_batch_gives_empty_output_and_zero_weight_grads():
    x, ids, w_gate, w_up, w_down, _ = _case(0, 32, 48)
    y = expert_ffn(x, ids, w_gate, w_up, w_down, block_m=16)
    assert y.shape == (0, 32)
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == (0, 32)
    for w in (*w_gate, *w_up, *w_down):
        assert w.grad is not None and torch.count_nonzero(w.grad) == 0


@needs_backend
def test_grads_only_where_required():
    x, ids, w_gate, w_up, w_down, dy = _case(20, 16, 32, seed=3)
    frozen_x = x.detach()
    expert_ffn(frozen_x, ids, w_gate, w_up, w_down, block_m=16, input_precision="ieee").backward(dy)
    assert all(w.grad is not None for w in (*w_gate, *w_up, *w_down))
    frozen_w = [[w.detach() for w in ws] for ws in (w_gate, w_up, w_down)]
    expert_ffn(x, ids, *frozen_w, block_m=16, input_precision="ieee").backward(dy)
    ref_x = x.detach().clone().requires_grad_()
    _torch_ffn(ref_x, ids, *frozen_w).backward(dy)
    torch.testing.assert_close(x.grad, ref_x.grad, **FP32_TOL)


@needs_backend
def test_transposed_x_and_expanded_output_grad():
    """The kernels read x and dy through their strides: x a transposed view, dy of y.sum() has stride 0."""
    x, ids, w_gate, w_up, w_down, _ = _case(24, 16, 32, seed=4)
    xt = x.detach().t().contiguous().requires_grad_()
    expert_ffn(xt.t(), ids, w_gate, w_up, w_down, block_m=16, input_precision="ieee").sum().backward()
    ref_x = x.detach().clone().requires_grad_()
    ref_w = [[w.detach().clone().requires_grad_() for w in ws] for ws in (w_gate, w_up, w_down)]
    _torch_ffn(ref_x, ids, *ref_w).sum().backward()
    torch.testing.assert_close(xt.grad.t(), ref_x.grad, **FP32_TOL)
    for w, r in zip((*w_gate, *w_up, *w_down), sum(ref_w, [])):
        torch.testing.assert_close(w.grad, torch.zeros_like(w) if r.grad is None else r.grad, **FP32_TOL)


@needs_backend
def test_bf16_matches_fp32_oracle_loosely():
    """bf16 operands (upcast before tl.dot in the interpreter), intermediates rounded to bf16."""
    y, ref, grads, ref_grads = _run_both(_case(37, 32, 48, dtype=torch.bfloat16, seed=5), block_m=16)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref, rtol=3e-2, atol=3e-2)
    for g, r in zip(grads, ref_grads):
        assert g.dtype == torch.bfloat16
        torch.testing.assert_close(g.float(), r.float(), rtol=5e-2, atol=5e-2)


def test_cpu_tensors_without_the_interpreter_raise(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x, ids, w_gate, w_up, w_down, _ = _case(4, 16, 16)
    if x.device.type == "cpu":
        with pytest.raises(RuntimeError, match="CUDA tensors, or TRITON_INTERPRET=1"):
            expert_ffn(x, ids, w_gate, w_up, w_down, block_m=16)


def test_rejects_bad_inputs():
    x, ids, w_gate, w_up, w_down, _ = _case(4, 16, 16)
    with pytest.raises(ValueError, match="w_down"):
        expert_ffn(x, ids, w_gate, w_up, w_down[:-1])
    with pytest.raises(ValueError, match=r"w_up\[2\]"):
        expert_ffn(x, ids, w_gate, [*w_up[:2], w_up[2][:8], w_up[3]], w_down)
    with pytest.raises(ValueError, match="expert_of_row"):
        expert_ffn(x, ids[:3], w_gate, w_up, w_down)
    with pytest.raises(ValueError, match="block_m must be a power of 2"):
        expert_ffn(x, ids, w_gate, w_up, w_down, block_m=24)
    with pytest.raises(ValueError, match="expert_ids must lie in"):
        expert_ffn(x, torch.full_like(ids, E), w_gate, w_up, w_down, block_m=16)


# --- compiled on a GPU (run with TRITON_INTERPRET=0) -------------------------------------------

@pytest.mark.gpu
@needs_compiled_gpu
def test_gpu_bf16_autotuned_matches_torch():
    gen = torch.Generator().manual_seed(0)
    rows, hidden, ffn = 1000, 256, 512

    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(DEVICE, torch.bfloat16).requires_grad_()

    x = leaf(rows, hidden)
    ids = torch.randint(0, E - 1, (rows,), generator=gen).to(DEVICE)  # the last expert gets no row
    w_gate = [leaf(hidden, ffn, scale=hidden ** -0.5) for _ in range(E)]
    w_up = [leaf(hidden, ffn, scale=hidden ** -0.5) for _ in range(E)]
    w_down = [leaf(ffn, hidden, scale=ffn ** -0.5) for _ in range(E)]
    dy = torch.randn(rows, hidden, generator=gen).to(DEVICE, torch.bfloat16)
    y, ref, grads, ref_grads = _run_both((x, ids, w_gate, w_up, w_down, dy))
    torch.testing.assert_close(y.float(), ref, rtol=5e-2, atol=5e-2)
    for g, r in zip(grads, ref_grads):
        # Weight grads sum over ~330 rows in bf16-rounded operands: compare relative to their scale.
        torch.testing.assert_close(g.float(), r, rtol=5e-2, atol=5e-2 * float(r.abs().max().clamp_min(1.0)))
