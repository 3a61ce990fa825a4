"""jdpm.training."""
