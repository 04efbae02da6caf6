"""The planner: search layouts x dispatcher x placement x capacity, rank them under routing conditions."""
