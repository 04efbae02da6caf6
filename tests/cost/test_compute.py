"""Compute cost helpers."""

import numpy as np


def test_fractional_rows_of_a_replica_round_up_before_padding():
    from moesim.cost.compute import padded_rows

    assert padded_rows(np.array([0.0, 0.5, 3.5, 64.0, 64.5]), 64).tolist() == [0, 64, 64, 64, 128]
