"""Records -> DataFrames -> summaries (computed in moesim.metrics.summary, typed in moesim.metrics.types);
errors for impossible results."""
