"""Small scenarios built in Python for fast tests."""

from __future__ import annotations

from moesim.io.profile import PROFILE_DIR, load_profile
from moesim.spec import (Activation, ClusterSpec, MoeModelSpec, ParallelLayout, Recompute, RoutingDistribution,
                         RoutingSpec, Scenario, SimulationSpec, TrainingSpec)
from moesim.spec.training import OptimizerSpec


def h100(gpus_per_node: int = 8, bandwidth_scale: float = 1.0):
    prof = load_profile(PROFILE_DIR / "dgx-h100.yaml")
    node = prof.node.replace(gpus_per_node=gpus_per_node,
                             nvlink_bandwidth_bytes_per_s=prof.node.nvlink_bandwidth_bytes_per_s * bandwidth_scale)
    fabric = prof.fabric.replace(nic_bandwidth_bytes_per_s=prof.fabric.nic_bandwidth_bytes_per_s * bandwidth_scale)
    return prof.replace(node=node, fabric=fabric)


def no_peer_overhead(prof, **fabric):
    """Closed forms count bandwidth and latency only: drop the per-peer issue cost (and override fabric fields)."""
    return prof.replace(node=prof.node.replace(nvlink_peer_overhead_s=0.0),
                        fabric=prof.fabric.replace(nic_peer_overhead_s=0.0, **fabric))


def tiny_model(**overrides) -> MoeModelSpec:
    fields = dict(name="tiny", num_layers=4, hidden_size=512, num_attention_heads=8, num_kv_heads=8, head_dim=64,
                  dense_ffn_size=1024, expert_ffn_size=1024, num_experts=8, top_k=2, num_shared_experts=0,
                  vocab_size=1000, activation=Activation.SWIGLU)
    fields.update(overrides)
    return MoeModelSpec(**fields)


def scenario(*, nodes: int = 1, gpus_per_node: int = 8, layout: ParallelLayout | None = None,
             model: MoeModelSpec | None = None, zipf_s: float = 0.0, steps: int = 2, seed: int = 0,
             global_batch: int = 16, seq_len: int = 256, bandwidth_scale: float = 1.0,
             recompute: Recompute = Recompute.NONE) -> Scenario:
    routing = RoutingSpec(RoutingDistribution.ZIPF, zipf_s) if zipf_s else RoutingSpec()
    return Scenario(
        name="test",
        cluster=ClusterSpec(h100(gpus_per_node, bandwidth_scale), nodes),
        model=model or tiny_model(),
        training=TrainingSpec(global_batch_size=global_batch, seq_len=seq_len, micro_batch_size=1,
                              optimizer=OptimizerSpec(), recompute=recompute),
        layout=layout or ParallelLayout(tp=1, pp=2, dp=4, ep=4),
        routing=routing,
        simulation=SimulationSpec(steps=steps, warmup_steps=0, seed=seed),
    )


def signal_when(proc, ready, send, deadline_s: float = 120.0, poll_s: float = 0.002) -> None:
    """Poll `ready()` while `proc` (a subprocess.Popen) runs; the first time it holds, call `send()` (e.g. a
    signal). Then wait for the process to end, and never leave it running."""
    import time

    deadline = time.monotonic() + deadline_s
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if ready():
                send()
                break
            time.sleep(poll_s)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
