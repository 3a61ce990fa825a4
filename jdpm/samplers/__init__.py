"""jdpm.samplers."""
