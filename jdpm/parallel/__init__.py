"""jdpm.parallel."""
