"""Calibration: measure expert kernels and collectives on the machine at hand, fit the cost models, write a
hardware profile (hw_profiles/<name>.yaml) with the raw samples beside it. torch and triton load lazily."""
