"""A run's summary as the text `moesim run` prints."""

from __future__ import annotations

from moesim.metrics.types import NetworkSummary, PlacementSummary, RunSummary

GIB = 2**30


def format_capacity_factor(value: float | None) -> str:
    """A capacity factor as users read it: `dropless` for null (no capacity limit)."""
    return "dropless" if value is None else f"{value:g}"


def _network_line(net: NetworkSummary) -> str:
    gb = 1e9
    tiers = "   ".join(f"{tier} {sent / gb:.2f} GB (links busy "
                       f"{100 * net.a2a_link_utilisation[tier].mean:.1f} % mean, "
                       f"{100 * net.a2a_link_utilisation[tier].max:.1f} % max)"
                       for tier, sent in net.a2a_bytes_per_step.items() if sent > 0)
    return (f"network         {net.model}/{net.solver}, {net.all_to_all} all-to-all; "
            f"all-to-all per step: {tiers or 'none'}")


def _placement_line(p: PlacementSummary) -> str:
    slots = f", {p.slots_per_gpu} slots per GPU" if p.slots_per_gpu else ""
    return (f"placement       {p.policy}{slots}: balance ratio (GPU max/mean) {p.balance_ratio_mean:.2f} mean, "
            f"{p.balance_ratio_p95:.2f} p95; {p.changes} changes, {p.moved_slots} slots moved, "
            f"{p.migration_s:.3f} s of {p.migration} migration")


def format_summary(s: RunSummary, wall_s: float) -> str:
    lay = s.layout
    gib = GIB
    lines = [
        f"scenario        {s.scenario}  ({s.gpus} GPUs, tp={lay.tp}" + (f" cp={lay.cp}" if lay.cp > 1 else "")
        + f" pp={lay.pp} dp={lay.dp} "
        f"ep={lay.ep} etp={lay.etp}; profile {s.profile.name}: {s.profile.status})",
        f"step time       p50 {s.step_time_s:.4f} s   p95 {s.step_time_p95_s:.4f} s   "
        f"p99 {s.step_time_p99_s:.4f} s   ({s.measured_steps} measured steps)",
        f"throughput      {s.tokens_per_s:,.0f} tokens/s   MFU {100 * s.mfu:.1f} %"
        + (f" (dropped tokens' FLOPs excluded; {100 * s.mfu_nominal:.1f} % counting them)"
           if s.mfu_nominal != s.mfu else ""),
        f"routing         expert max/mean {s.expert_load_max_over_mean:.2f}   "
        f"GPU max/mean {s.gpu_load_max_over_mean:.2f}",
        f"gate            capacity factor {format_capacity_factor(s.capacity_factor)}: "
        f"dropped {100 * s.dropped_fraction:.2f} % of assignments "
        f"({100 * s.dropped_first_choice_fraction:.2f} % of first choices), "
        f"padding {100 * s.padding_fraction:.2f} % of expert rows"
        + (f", {100 * s.unrouted_token_fraction:.2f} % of tokens reach no expert"
           if s.unrouted_token_fraction else ""),
        f"memory          peak {s.peak_memory_bytes_max / gib:.1f} GiB of {s.hbm_bytes / gib:.1f} GiB"
        + ("" if s.fits_in_memory else "   DOES NOT FIT") + ": " + ", ".join(
            f"{k.removesuffix('_bytes').replace('_', ' ')} {v / gib:.1f}"
            for k, v in s.peak_memory_breakdown_bytes.items() if k != "total_bytes"),
        _network_line(s.network),
        _placement_line(s.placement),
        "breakdown (mean over ranks, s/step):",
    ]
    total = sum(s.breakdown_s.values())
    for bucket, sec in s.breakdown_s.items():
        hidden = s.hidden_s.get(bucket, 0.0)
        lines.append(f"  {bucket:<16}{sec:10.4f}  {100 * sec / total if total else 0:5.1f} %"
                     + (f"   (+{hidden:.4f} hidden under compute)" if hidden > 0 else ""))
    lines.append(f"simulated in {wall_s:.2f} s wall")
    return "\n".join(lines)
