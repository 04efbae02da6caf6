"""What `moesim plan` writes and prints: candidates.parquet (every candidate, its estimate or why it was pruned),
shortlist.md (the ranked, explained short list), plan.yaml (the winner as a runnable scenario), its Megatron-LM
launch command and DeepSpeed MoE config (moesim.export.megatron), pareto.png."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from moesim.export.megatron import write_megatron_export
from moesim.io.results import write_figure_atomic, write_parquet_atomic, write_text_atomic
from moesim.io.safe_yaml import dump_yaml
from moesim.plan.run import PlanResult, candidate_rows, winner_document
from moesim.viz.pareto import pareto_figure

FILES = ("candidates.parquet", "shortlist.md", "plan.yaml", "megatron_args.txt", "deepspeed_moe.json", "pareto.png")


def layout_label(values: dict) -> str:
    """A candidate's layout in one line: parallel sizes, micro-batch size, recompute, dispatcher, overlap."""
    split = f" ({values['first_stage_layers']}/../{values['last_stage_layers']})" \
        if values["first_stage_layers"] is not None else ""
    text = f"tp{values['tp']} cp{values['cp']} pp{values['pp']}{split} vpp{values['vpp']} dp{values['dp']} " \
           f"ep{values['ep']} etp{values['etp']} mbs{values['micro_batch_size']} {values['recompute']}"
    extras = [values["dispatcher"]] + (["a2a-overlap"] if values["moe_a2a_overlap"] else [])
    return text + " " + " ".join(extras)


def choice_label(e) -> str:
    """The short list's own choices: placement (EPLB's redundant slots) and capacity."""
    placement = e.placement.value + (f" +{e.redundant_experts}" if e.redundant_experts else "")
    return f"{placement}, " + ("dropless" if e.capacity_factor is None else f"CF {e.capacity_factor:g}")


def shortlist_markdown(result: PlanResult, title: str) -> str:
    pruned = sum(1 for s in result.screened if s.reason)
    lines = [f"# {title}", "",
             f"{len(result.screened)} candidates screened in {result.screen_s:.1f} s ({pruned} pruned, reasons in "
             f"candidates.parquet); {len(result.shortlist)} layout x placement x capacity choices simulated in "
             f"{result.simulate_s:.1f} s under {', '.join(result.plan.routing)}; ranked by "
             f"{result.plan.rank_by.value} step time.", ""]
    if not result.shortlist:
        lines.append("No candidate fits: see pruned_because in candidates.parquet.")
        return "\n".join(lines) + "\n"
    names = list(result.shortlist[0].predictions)
    lines += ["| # | layout | placement, capacity | estimate s | " + " | ".join(f"{n} s" for n in names)
              + f" | {result.plan.rank_by.value} s | dropped % | peak memory GiB |",
              "|---|---|---|---|" + "---|" * len(names) + "---|---|---|"]
    for i, e in enumerate(result.shortlist, 1):
        est = e.screened.estimate
        lines.append(f"| {i} | {layout_label(e.screened.candidate.values)} | {choice_label(e)} | {est.step_s:.3f} | "
                     + " | ".join(f"{e.predictions[n].step_s:.3f}" for n in names)
                     + f" | {e.score_s:.3f} | {100 * max(p.dropped_fraction for p in e.predictions.values()):.2f} "
                     f"| {est.peak_memory_bytes / 2**30:.1f} |")
    lines += ["", "## Why", ""]
    for i, e in enumerate(result.shortlist, 1):
        lines.append(f"{i}. {layout_label(e.screened.candidate.values)}, {choice_label(e)}:")
        lines += [f"   - {line}" for line in e.explanation]
        worst = max(e.predictions, key=lambda k: e.predictions[k].step_s)
        shown = {b: v for b, v in e.predictions[worst].breakdown_s.items() if v > 5e-4}
        lines.append(f"   - breakdown under {worst} (s/step): "
                     + ", ".join(f"{b} {v:.3f}" for b, v in sorted(shown.items(), key=lambda kv: -kv[1])))
    return "\n".join(lines) + "\n"


def write_plan(out_dir: Path, result: PlanResult, doc: dict, title: str) -> list[Path]:
    """Every file of FILES in out_dir, each written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = pd.DataFrame(candidate_rows(result))
    paths = [write_parquet_atomic(out_dir / "candidates.parquet", rows),
             write_text_atomic(out_dir / "shortlist.md", shortlist_markdown(result, title))]
    if result.winner is not None:
        paths.append(write_text_atomic(out_dir / "plan.yaml", plan_yaml_text(doc, result.winner)))
        paths += write_megatron_export(out_dir, result.winner.scenario)
    pareto = pareto_arrays(result, rows)
    if pareto is not None:
        paths.append(write_figure_atomic(out_dir / "pareto.png", pareto_figure(*pareto, title)))
    return paths


def plan_yaml_text(doc: dict, winner) -> str:
    """plan.yaml: the user's scenario file with the winner's choices written in (`moesim run plan.yaml`)."""
    return ("# written by moesim plan: the winner of shortlist.md; moesim run plan.yaml\n"
            + dump_yaml(winner_document(doc, winner)))


def pareto_arrays(result: PlanResult, rows: pd.DataFrame | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int | None] | None:
    """pareto_figure's inputs: the estimated step time and memory headroom of every candidate that fits, the
    short list's and the winner's indices among them; None when nothing fits. `rows`: candidate_rows as a frame,
    when the caller has it already."""
    rows = pd.DataFrame(candidate_rows(result)) if rows is None else rows
    fits = rows[rows["pruned_because"] == ""].reset_index(drop=True)
    if not len(fits):
        return None
    short_ids = {id(e.screened) for e in result.shortlist}
    kept = [s for s in result.screened if not s.reason]
    shortlist = np.array([i for i, s in enumerate(kept) if id(s) in short_ids], dtype=np.int64)
    winner = next((i for i, s in enumerate(kept) if result.winner is not None and s is result.winner.screened), None)
    return fits["estimated_step_s"].to_numpy(), fits["memory_headroom_bytes"].to_numpy(), shortlist, winner
