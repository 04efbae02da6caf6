"""Records -> DataFrames -> summaries."""

from moesim.metrics.summary import per_rank_breakdown, summarize

__all__ = ["per_rank_breakdown", "summarize"]
