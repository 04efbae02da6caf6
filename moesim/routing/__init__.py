"""Token -> expert loads: how many assignments each source rank sends to each expert, and what the gate keeps."""

from moesim.routing.capacity import GateResult, apply_gate, capacity
from moesim.routing.generators import SyntheticRouter, expert_shares, zipf_shares
from moesim.routing.replay import replay_loads

__all__ = ["GateResult", "SyntheticRouter", "apply_gate", "capacity", "expert_shares", "replay_loads", "zipf_shares"]
