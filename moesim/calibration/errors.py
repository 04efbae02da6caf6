"""The calibration failure type: a measurement that could not be taken (a peer died, a collective timed out, a
rank hung). Bad user input stays moesim.spec.errors.SpecError."""

from __future__ import annotations


class CalibrationError(Exception):
    """A calibration run failed. The message is ONE line saying which rank, which operation and why, e.g.
    "rank 1: all_to_all inter_node 4096 B, repeat 2: Connection closed by peer"."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # never more than one line
