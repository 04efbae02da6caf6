"""Results -> files and text: a run's directory, the printed summary, sweep tables. Above sim/, metrics/,
viz/ and export/; writes only through moesim.io."""
