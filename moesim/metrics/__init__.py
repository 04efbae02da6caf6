"""Records -> DataFrames -> summaries (moesim.metrics.summary); errors for impossible results."""
