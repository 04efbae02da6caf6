"""Record a real routing trace: train a small byte-level MoE transformer with torch and count its router's choices.

The model is a pre-norm decoder-only transformer (causal self-attention through
`scaled_dot_product_attention`, an MoE FFN in every layer: linear router -> softmax -> top-k, the k weights
renormalised, SwiGLU experts) trained on next-byte prediction with AdamW. The text is real and available offline:
by default the Python standard library's own source files (`text_source="stdlib"`), or any file or directory.

What is recorded: for every recorded step, layer and micro-batch, how many (token, expert) assignments each
*source rank* sent to each expert -- counts[step, layer, micro_batch, src_rank, expert]. One process emulates
`num_sources` data-parallel ranks: each micro-batch's `micro_batch_size` sequences are split into `num_sources`
equal shards of consecutive sequences, and shard r is what data-parallel rank r would have routed. Every row
therefore sums to exactly tokens_per_shard * top_k (dropless: no capacity limit during recording).

The counts of step s are the routing of step s's forward passes, i.e. after s optimizer updates.

Determinism: parameters and data come from explicit `torch.Generator`s seeded with `seed` (the global torch RNG
is not touched), deterministic algorithms are switched on and the CPU thread count is fixed (`num_threads`, by
default min(4, cpu_count)) while recording; the caller's torch settings are restored afterwards. On CPU the same
config, thread count, torch version, Python version (the stdlib corpus is that Python's own) and CPU kind give
byte-identical counts. A different thread count changes float summation order, and after some tens of steps a
near-tie in the router flips and the counts diverge (statistically alike); pin num_threads to reproduce a trace.
GPU runs are best effort (deterministic algorithms in warn-only mode).

torch is imported lazily, inside the functions that need it: importing this module does not import torch.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sysconfig
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moesim.spec.errors import SpecError, require
from moesim.spec.trace import RoutingTrace

VOCAB_SIZE = 256  # byte-level tokens
STDLIB = "stdlib"
TEXT_SUFFIXES = (".py", ".md", ".rst", ".txt")  # files read from a directory text_source
_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"})
MAX_THREADS = 4

ProgressFn = Callable[[int, float], None]  # (step, next-byte loss of that step, mean over its micro-batches)


@dataclass(frozen=True)
class RecorderConfig:
    num_layers: int = 4
    hidden_size: int = 128
    num_heads: int = 4
    num_experts: int = 16
    top_k: int = 2
    expert_ffn_size: int = 256  # SwiGLU inner size of one expert
    seq_len: int = 128  # bytes per sequence
    micro_batch_size: int = 8  # sequences per micro-batch (all emulated source ranks together)
    num_micro_batches: int = 4  # micro-batches per step (gradient accumulation)
    num_sources: int = 4  # emulated data-parallel ranks: each micro-batch is split into this many shards
    steps: int = 200  # optimizer steps
    record_every: int = 1  # record steps 0, n, 2n, ... and always the last one
    learning_rate: float = 3e-3  # AdamW peak learning rate
    warmup_steps: int = 20  # linear learning-rate warmup from lr / warmup_steps, then constant
    aux_loss_coef: float = 0.0  # Switch load-balancing loss weight; 0 = none (skew develops), 0.01 = typical
    seed: int = 0
    num_threads: int = 0  # CPU threads while recording; 0 = min(4, cpu_count). The counts depend on it
    device: str = "auto"  # "auto" (cuda when available, else cpu), "cpu", "cuda" or "cuda:N"
    text_source: str = STDLIB  # "stdlib" or a path to a text file or a directory of text files
    text_budget_bytes: int = 4_000_000  # at most this many bytes of text are read

    def __post_init__(self) -> None:
        for name in ("num_layers", "hidden_size", "num_heads", "num_experts", "top_k", "expert_ffn_size",
                     "seq_len", "micro_batch_size", "num_micro_batches", "num_sources", "steps", "record_every",
                     "warmup_steps"):
            value = getattr(self, name)
            require(_is_int(value) and value >= 1, name, value, "an integer >= 1")
        require(_is_int(self.seed) and self.seed >= 0, "seed", self.seed, "an integer >= 0")
        require(_is_int(self.num_threads) and self.num_threads >= 0, "num_threads", self.num_threads,
                "an integer >= 0 (0 = min(4, cpu_count))")
        require(self.top_k <= self.num_experts, "top_k", self.top_k, f"<= num_experts ({self.num_experts})")
        require(self.hidden_size % self.num_heads == 0, "hidden_size", self.hidden_size,
                f"a multiple of num_heads ({self.num_heads})")
        require(self.micro_batch_size % self.num_sources == 0, "micro_batch_size", self.micro_batch_size,
                f"a multiple of num_sources ({self.num_sources}): each source rank gets whole sequences")
        require(_is_number(self.learning_rate) and self.learning_rate > 0, "learning_rate", self.learning_rate,
                "a number > 0")
        require(_is_number(self.aux_loss_coef) and self.aux_loss_coef >= 0, "aux_loss_coef", self.aux_loss_coef,
                "a number >= 0")
        require(isinstance(self.device, str) and (self.device in ("auto", "cpu", "cuda")
                                                  or self.device.startswith("cuda:")),
                "device", self.device, "'auto', 'cpu', 'cuda' or 'cuda:N'")
        require(isinstance(self.text_source, str) and bool(self.text_source), "text_source", self.text_source,
                "'stdlib' or a path to a text file or directory")
        require(_is_int(self.text_budget_bytes) and self.text_budget_bytes > self.seq_len + 1,
                "text_budget_bytes", self.text_budget_bytes, f"an integer > seq_len + 1 ({self.seq_len + 1})")

    @property
    def tokens_per_shard(self) -> int:
        return self.micro_batch_size // self.num_sources * self.seq_len

    @property
    def threads(self) -> int:
        return self.num_threads or max(1, min(MAX_THREADS, os.cpu_count() or 1))

    @property
    def recorded_steps(self) -> np.ndarray:
        steps = [s for s in range(self.steps) if s % self.record_every == 0 or s == self.steps - 1]
        return np.array(steps, dtype=np.int64)


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and bool(np.isfinite(value))


# ---------------------------------------------------------------------------------------------------- text corpus

@dataclass(frozen=True)
class TextCorpus:
    data: bytes
    num_files: int
    description: str  # where the bytes come from, with their sha256


def text_files(text_source: str) -> list[Path]:
    """The files a text source reads, in a fixed order (sorted by path relative to the root)."""
    if text_source == STDLIB:
        root = Path(sysconfig.get_paths()["stdlib"])
        suffixes: tuple[str, ...] = (".py",)
    else:
        root = Path(text_source)
        if root.is_file():
            return [root]
        suffixes = TEXT_SUFFIXES
    if not root.is_dir():
        raise SpecError("text_source", text_source, "'stdlib' or an existing text file or directory")
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS]  # pruned, not walked
        found.extend(Path(folder, n) for n in names if n.endswith(suffixes))
    return sorted((f for f in found if f.is_file()), key=lambda f: f.relative_to(root).as_posix())


def load_corpus(text_source: str, budget_bytes: int) -> TextCorpus:
    """Concatenate the source's files (UTF-8, undecodable bytes dropped) up to `budget_bytes`."""
    chunks, size, files = [], 0, 0
    for f in text_files(text_source):
        if size >= budget_bytes:
            break
        text = f.read_text(encoding="utf-8", errors="ignore").encode("utf-8")
        chunks.append(text[: budget_bytes - size])
        size += len(chunks[-1])
        files += 1
    data = b"".join(chunks)
    if not data:
        raise SpecError("text_source", text_source, "a source with some text in it")
    where = (f"Python {platform.python_version()} standard library .py files" if text_source == STDLIB
             else f"text files under {text_source}")
    digest = hashlib.sha256(data).hexdigest()[:16]
    return TextCorpus(data, files, f"{where} (first {files} files sorted by path, {len(data)} bytes, "
                                   f"sha256 {digest})")


# ------------------------------------------------------------------------------------------------- torch plumbing

@contextmanager
def _torch_settings(torch: Any, device: Any, threads: int) -> Iterator[None]:
    """Deterministic algorithms and a fixed thread count while recording; the caller's settings come back."""
    old_threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(det, warn_only=warn_only)


def _resolve_device(torch: Any, name: str) -> Any:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SpecError("device", name, "'cpu' or 'auto' (no CUDA device is available)")
    return torch.device(name)


def _init_params(torch: Any, cfg: RecorderConfig, gen: Any, device: Any) -> dict[str, Any]:
    """GPT-2 style init: N(0, 0.02), residual projections scaled by 1/sqrt(2 * layers), LayerNorm 1/0."""
    h, e, f = cfg.hidden_size, cfg.num_experts, cfg.expert_ffn_size
    resid = 0.02 / (2 * cfg.num_layers) ** 0.5

    def normal(*shape: int, std: float = 0.02) -> Any:
        return torch.randn(*shape, generator=gen) * std

    params = {"embed": normal(VOCAB_SIZE, h), "pos": normal(cfg.seq_len, h),
              "lnf.w": torch.ones(h), "lnf.b": torch.zeros(h)}
    for layer in range(cfg.num_layers):
        params.update({
            f"{layer}.ln1.w": torch.ones(h), f"{layer}.ln1.b": torch.zeros(h),
            f"{layer}.qkv": normal(h, 3 * h), f"{layer}.proj": normal(h, h, std=resid),
            f"{layer}.ln2.w": torch.ones(h), f"{layer}.ln2.b": torch.zeros(h),
            f"{layer}.router": normal(h, e),
            f"{layer}.gate": normal(e, h, f), f"{layer}.up": normal(e, h, f),
            f"{layer}.down": normal(e, f, h, std=resid),
        })
    return {k: v.to(device).requires_grad_(True) for k, v in params.items()}


def _attention(torch: Any, p: dict[str, Any], layer: int, h: Any, num_heads: int) -> Any:
    b, s, d = h.shape
    q, k, v = (h @ p[f"{layer}.qkv"]).view(b, s, 3, num_heads, d // num_heads).permute(2, 0, 3, 1, 4)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    return out.transpose(1, 2).reshape(b, s, d) @ p[f"{layer}.proj"]


def _moe(torch: Any, p: dict[str, Any], layer: int, x: Any, top_k: int) -> tuple[Any, Any, Any]:
    """Route -> dispatch (tokens sorted by expert) -> SwiGLU experts -> combine (gather back, weighted sum).
    Returns the output, the chosen experts [tokens, k] and the Switch balance term E * sum_e f_e * P_e."""
    tokens, d = x.shape
    num_experts = p[f"{layer}.router"].shape[1]
    probs = torch.softmax((x @ p[f"{layer}.router"]).float(), dim=-1)
    weights, chosen = torch.topk(probs, top_k, dim=-1)
    weights = (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)
    flat = chosen.reshape(-1)
    order = torch.argsort(flat, stable=True)
    loads = torch.bincount(flat, minlength=num_experts)
    x_sorted = x[order // top_k]
    gate, up, down = (p[f"{layer}.{name}"].unbind(0) for name in ("gate", "up", "down"))  # one backward op each
    outs, start = [], 0
    for expert, n in enumerate(loads.tolist()):
        if n:
            xe = x_sorted[start:start + n]
            outs.append((torch.nn.functional.silu(xe @ gate[expert]) * (xe @ up[expert])) @ down[expert])
        start += n
    out_sorted = torch.cat(outs)
    out = out_sorted[torch.argsort(order)].view(tokens, top_k, d)
    y = (out * weights.unsqueeze(-1)).sum(dim=1)
    balance = num_experts * torch.sum(loads.float() / flat.numel() * probs.mean(dim=0))
    return y, chosen, balance


def _forward(torch: Any, p: dict[str, Any], cfg: RecorderConfig, window: Any) -> tuple[Any, Any, list[Any]]:
    """Next-byte loss, summed balance term and each layer's chosen experts [batch * seq, k] for one micro-batch."""
    fn = torch.nn.functional
    inputs, targets = window[:, :-1], window[:, 1:]
    b, s = inputs.shape
    d = cfg.hidden_size
    x = p["embed"][inputs] + p["pos"][:s]
    chosen, balance = [], x.new_zeros(())
    for layer in range(cfg.num_layers):
        x = x + _attention(torch, p, layer, fn.layer_norm(x, (d,), p[f"{layer}.ln1.w"], p[f"{layer}.ln1.b"]),
                           cfg.num_heads)
        h = fn.layer_norm(x, (d,), p[f"{layer}.ln2.w"], p[f"{layer}.ln2.b"]).reshape(b * s, d)
        y, c, bal = _moe(torch, p, layer, h, cfg.top_k)
        x = x + y.view(b, s, d)
        chosen.append(c)
        balance = balance + bal
    logits = fn.layer_norm(x, (d,), p["lnf.w"], p["lnf.b"]) @ p["embed"].T  # tied input/output embedding
    return fn.cross_entropy(logits.reshape(-1, VOCAB_SIZE), targets.reshape(-1)), balance, chosen


def _shard_counts(torch: Any, chosen: Any, cfg: RecorderConfig) -> Any:
    """[sources, experts] assignment counts: rows of `chosen` are in (sequence, position) order, so shard r is a
    contiguous block of tokens_per_shard rows."""
    shard = torch.arange(cfg.num_sources, device=chosen.device).repeat_interleave(cfg.tokens_per_shard * cfg.top_k)
    keys = shard * cfg.num_experts + chosen.reshape(-1)
    return torch.bincount(keys, minlength=cfg.num_sources * cfg.num_experts).view(cfg.num_sources, cfg.num_experts)


# ------------------------------------------------------------------------------------------------------ recording

def record_trace(config: RecorderConfig, progress: ProgressFn | None = None) -> RoutingTrace:
    """Train the configured model and return its router's counts at config.recorded_steps."""
    import torch  # noqa: PLC0415 - torch only when a trace is recorded

    device = _resolve_device(torch, config.device)
    corpus = load_corpus(config.text_source, config.text_budget_bytes)
    if len(corpus.data) <= config.seq_len + 1:
        raise SpecError("text_source", config.text_source, f"more than seq_len + 1 ({config.seq_len + 1}) bytes")
    with _torch_settings(torch, device, config.threads):
        counts = _train(torch, config, corpus, device, progress)
    return RoutingTrace(counts, config.recorded_steps, config.top_k, _describe(torch, config, corpus, device))


def _train(torch: Any, cfg: RecorderConfig, corpus: TextCorpus, device: Any, progress: ProgressFn | None) -> np.ndarray:
    model_gen = torch.Generator().manual_seed(cfg.seed)
    data_gen = torch.Generator().manual_seed(cfg.seed + 1)  # a separate stream: data order is independent of the model
    params = _init_params(torch, cfg, model_gen, device)
    optim = torch.optim.AdamW(list(params.values()), lr=cfg.learning_rate, weight_decay=0.01, foreach=False)
    text = torch.frombuffer(bytearray(corpus.data), dtype=torch.uint8)
    offsets = torch.arange(cfg.seq_len + 1)
    record_at = {int(s): i for i, s in enumerate(cfg.recorded_steps)}
    counts = np.zeros((len(record_at), cfg.num_layers, cfg.num_micro_batches, cfg.num_sources, cfg.num_experts),
                      dtype=np.int64)
    for step in range(cfg.steps):
        for group in optim.param_groups:
            group["lr"] = cfg.learning_rate * min(1.0, (step + 1) / cfg.warmup_steps)
        optim.zero_grad(set_to_none=True)
        step_loss = 0.0
        for mb in range(cfg.num_micro_batches):
            starts = torch.randint(0, len(text) - cfg.seq_len - 1, (cfg.micro_batch_size,), generator=data_gen)
            window = text[starts[:, None] + offsets].long().to(device)
            loss, balance, chosen = _forward(torch, params, cfg, window)
            ((loss + cfg.aux_loss_coef * balance) / cfg.num_micro_batches).backward()
            step_loss += float(loss.detach()) / cfg.num_micro_batches
            if step in record_at:
                for layer, c in enumerate(chosen):
                    counts[record_at[step], layer, mb] = _shard_counts(torch, c, cfg).cpu().numpy()
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0, foreach=False)
        optim.step()
        if progress is not None:
            progress(step, step_loss)
    return counts


def _describe(torch: Any, cfg: RecorderConfig, corpus: TextCorpus, device: Any) -> str:
    return (f"moesim trace recorder: byte-level decoder-only MoE transformer (layers={cfg.num_layers}, "
            f"hidden={cfg.hidden_size}, heads={cfg.num_heads}, experts={cfg.num_experts}, top_k={cfg.top_k}, "
            f"SwiGLU expert ffn={cfg.expert_ffn_size}, softmax top-k router, dropless), next-byte loss, "
            f"AdamW lr={cfg.learning_rate:g} (warmup {cfg.warmup_steps} steps), "
            f"aux_loss_coef={cfg.aux_loss_coef:g}, steps={cfg.steps}, "
            f"record_every={cfg.record_every}, seq_len={cfg.seq_len}, {cfg.micro_batch_size} sequences x "
            f"{cfg.num_micro_batches} micro-batches per step split over {cfg.num_sources} emulated data-parallel "
            f"source ranks, seed={cfg.seed}; data: {corpus.description}; torch {torch.__version__} on {device.type}"
            f"{f' ({cfg.threads} threads)' if device.type == 'cpu' else ''}")
