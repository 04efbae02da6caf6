"""The interface between the simulator and any network model."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class CollectiveModel(Protocol):
    """Times of collectives, vectorised over independent groups that run at the same time.

    `ranks` is an int array [..., n]: each row is one group's global ranks in group order.
    Returned arrays have the leading shape of `ranks` (one time per group, seconds)."""

    def all_to_all_s(self, bytes_matrix: np.ndarray, ranks: np.ndarray) -> np.ndarray:
        """bytes_matrix [..., n, n]: bytes from member i to member j (diagonal stays local, costs nothing)."""
        ...

    def all_reduce_s(self, nbytes: float, ranks: np.ndarray) -> np.ndarray:
        """Every member reduces a buffer of nbytes."""
        ...

    def all_gather_s(self, nbytes: float, ranks: np.ndarray) -> np.ndarray:
        """nbytes is the size of the gathered (output) buffer."""
        ...

    def reduce_scatter_s(self, nbytes: float, ranks: np.ndarray) -> np.ndarray:
        """nbytes is the size of the reduced (input) buffer: a ring moves what all-gather moves, the other way;
        a calibrated profile's own measurement of each may differ (gloo's reduce-scatter is not a ring)."""
        ...

    def p2p_s(self, nbytes: float, src: int, dst: int) -> float:
        ...
