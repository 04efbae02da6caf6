"""Parallel layout with Megatron-core semantics.

Dense layers use tp x cp x dp x pp; expert layers re-fold the same tp x cp x dp ranks of a pipeline stage as
etp x ep x edp ("MoE parallel folding"). Rank order follows Megatron's default (tp-cp-ep-dp-pp): tp innermost,
then cp, then dp, then pp; inside a stage, expert ranks are etp innermost, then ep, then edp. Sequence parallelism
is on whenever tp > 1 (Megatron requires it for MoE with tensor parallelism), so each rank routes seq/(cp·tp) tokens.
"""

from __future__ import annotations

import numpy as np
from pydantic import model_validator

from moesim.spec.base import Count, SpecEnum, SpecModel, spec_field
from moesim.spec.errors import require

_GPUS = "(GPUs in each group)"


class RankOrder(SpecEnum):
    """How Megatron lays the parallel dimensions over the GPUs, innermost first (parallel_state's `order`)."""

    TP_CP_EP_DP_PP = "tp-cp-ep-dp-pp"  # Megatron's default: a pipeline stage is a block of consecutive GPUs
    TP_CP_EP_PP_DP = "tp-cp-ep-pp-dp"  # --use-tp-pp-dp-mapping: the stages of one pipeline are neighbours


class ParallelLayout(SpecModel):
    """Megatron's parallel sizes (its flags: --tensor-model-parallel-size, --context-parallel-size,
    --pipeline-model-parallel-size, data parallel = the rest, --expert-model-parallel-size,
    --expert-tensor-parallel-size)."""

    tp: Count = spec_field(1, help="tensor parallel size (sequence parallel when > 1)", unit=_GPUS, ge=1)
    cp: Count = spec_field(1, help="context parallel size: each sequence split over cp ranks, attention as a ring "
                                   "exchanging keys and values (Megatron --context-parallel-size)", unit=_GPUS, ge=1)
    pp: Count = spec_field(1, help="pipeline parallel size (stages)", unit=_GPUS, ge=1)
    dp: Count = spec_field(1, help="data parallel size", unit=_GPUS, ge=1)
    ep: Count = spec_field(1, help="expert parallel size, carved out of tp x cp x dp", unit=_GPUS, ge=1)
    etp: Count = spec_field(1, help="expert tensor parallel size", unit=_GPUS, ge=1)
    vpp: Count = spec_field(1, help="virtual pipeline stages (model chunks) per pipeline rank, run as Megatron's "
                                    "interleaved 1F1B; 1 = plain 1F1B (Megatron --num-virtual-stages-per-pipeline-"
                                    "rank, formerly --virtual-pipeline-model-parallel-size)",
                            unit="(model chunks per pipeline rank)", ge=1)
    first_stage_layers: Count | None = spec_field(
        None, help="transformer layers on the first pipeline stage; null = an even share (Megatron "
                   "--decoder-first-pipeline-num-layers). The layers left split evenly over the middle stages",
        unit="(layers)", ge=1)
    last_stage_layers: Count | None = spec_field(
        None, help="transformer layers on the last pipeline stage; null = an even share (Megatron "
                   "--decoder-last-pipeline-num-layers)", unit="(layers)", ge=1)

    order: RankOrder = spec_field(
        RankOrder.TP_CP_EP_DP_PP, help="how the dimensions are laid over the GPUs, innermost first: tp-cp-ep-dp-pp "
        "(Megatron's default) or tp-cp-ep-pp-dp (Megatron --use-tp-pp-dp-mapping); decides which groups cross nodes")

    @model_validator(mode="after")
    def _expert_grid_fits(self) -> ParallelLayout:
        require(self.ranks_per_stage % (self.ep * self.etp) == 0, "ep", self.ep,
                f"ep x etp ({self.ep} x {self.etp}) must divide tp x cp x dp ({self.ranks_per_stage})")
        # pp inside dp: the expert grid (etp-ep-pp-edp) must put every GPU on the same stage as the dense grid
        require(self.order is RankOrder.TP_CP_EP_DP_PP or self.pp == 1 or self.ep * self.etp == self.tp * self.cp,
                "order", self.order.value, f"tp-cp-ep-dp-pp, or ep x etp ({self.ep} x {self.etp}) equal to tp x cp "
                f"({self.tp} x {self.cp}) with tp-cp-ep-pp-dp (both grids must place a GPU on the same stage)")
        return self

    @model_validator(mode="after")
    def _pipeline_options_need_stages(self) -> ParallelLayout:
        """Megatron's argument checks: virtual stages and uneven splits need pp > 1."""
        require(self.vpp == 1 or self.pp > 1, "vpp", self.vpp,
                "1 when pp = 1: interleaving needs pipeline stages (Megatron requires "
                "--pipeline-model-parallel-size > 1 for virtual pipeline stages)")
        for key in ("first_stage_layers", "last_stage_layers"):
            require(getattr(self, key) is None or self.pp > 1, key, getattr(self, key),
                    "null when pp = 1: there is only one stage, holding every layer")
        return self

    @property
    def world_size(self) -> int:
        return self.tp * self.cp * self.dp * self.pp

    @property
    def ranks_per_stage(self) -> int:
        return self.tp * self.cp * self.dp

    @property
    def dp_cp(self) -> int:
        """Ranks holding the same dense weights in a stage: their gradients are reduced together and the
        distributed optimizer shards over them (Megatron's data-parallel group with context parallelism)."""
        return self.dp * self.cp

    @property
    def edp(self) -> int:
        """Expert data-parallel degree: replicas of each expert shard inside a stage."""
        return self.ranks_per_stage // (self.ep * self.etp)

    def physical(self, rank):
        """The GPU (global rank on the cluster) of stage-major rank `rank` = position in the stage's ranks + stage
        x ranks_per_stage, the index the simulator's per-rank arrays and records use. The default order lays them
        alike; tp-cp-ep-pp-dp puts the pp stages of each block of tp x cp GPUs next to each other."""
        rank = np.asarray(rank)
        if self.order is RankOrder.TP_CP_EP_DP_PP:
            return rank
        block = self.tp * self.cp
        stage, within = np.divmod(rank, self.ranks_per_stage)
        d, b = np.divmod(within, block)
        return b + block * (stage + self.pp * d)

    def _grid(self) -> np.ndarray:
        return self.physical(np.arange(self.world_size)).reshape(self.pp, self.dp, self.cp, self.tp)

    def _expert_grid(self) -> np.ndarray:
        return self.physical(np.arange(self.world_size)).reshape(self.pp, self.edp, self.ep, self.etp)

    # Each *_groups() returns an int array whose last axis lists one group's GPUs (physical ranks) in group order.
    def tp_groups(self) -> np.ndarray:  # [pp, dp * cp, tp]
        return self._grid().reshape(self.pp, self.dp * self.cp, self.tp)

    def cp_groups(self) -> np.ndarray:  # [pp, dp, tp, cp]: one ring each
        return self._grid().transpose(0, 1, 3, 2)

    def dp_groups(self) -> np.ndarray:  # [pp, tp, dp * cp]: the dense gradients' groups (dp_cp)
        return self.tp_groups().transpose(0, 2, 1)

    def ep_groups(self) -> np.ndarray:  # [pp, edp, etp, ep]
        return self._expert_grid().transpose(0, 1, 3, 2)

    def edp_groups(self) -> np.ndarray:  # [pp, ep, etp, edp]
        return self._expert_grid().transpose(0, 2, 3, 1)

    def etp_groups(self) -> np.ndarray:  # [pp, edp, ep, etp]
        return self._expert_grid()

    def stage_of(self, rank: int) -> int:
        return rank // self.ranks_per_stage

    def ep_rank_of(self, rank: int) -> int:
        return (rank % self.ranks_per_stage) // self.etp % self.ep

    def stage_ranks(self, stage: int) -> np.ndarray:
        return np.arange(stage * self.ranks_per_stage, (stage + 1) * self.ranks_per_stage)
