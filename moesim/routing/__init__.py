"""Token -> expert loads: how many assignments each source rank sends to each expert."""

from moesim.routing.generators import expert_shares, sample_loads, zipf_shares

__all__ = ["expert_shares", "sample_loads", "zipf_shares"]
