"""Collective timing. `CollectiveModel` is the interface the simulator uses; `AlphaBetaNetwork` is the
per-tier alpha-beta model (a flow-level model replaces it behind the same interface)."""

from moesim.network.alpha_beta import AlphaBetaNetwork
from moesim.network.model import CollectiveModel

__all__ = ["AlphaBetaNetwork", "CollectiveModel"]
