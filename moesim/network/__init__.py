"""Collective timing. `CollectiveModel` is the interface the simulator uses; `build_network` makes the model a
scenario's `network:` section asks for: the flow-level topology model (default) or per-tier alpha-beta."""

from moesim.network.alpha_beta import AlphaBetaNetwork
from moesim.network.flow import FlowNetwork
from moesim.network.model import CollectiveModel
from moesim.spec.hardware import ClusterSpec
from moesim.spec.network import NetworkModelKind, NetworkSpec


def build_network(cluster: ClusterSpec, spec: NetworkSpec = NetworkSpec()) -> CollectiveModel:
    if spec.model is NetworkModelKind.ALPHA_BETA:
        return AlphaBetaNetwork(cluster, spec)
    return FlowNetwork(cluster, spec)


__all__ = ["AlphaBetaNetwork", "CollectiveModel", "FlowNetwork", "build_network"]
