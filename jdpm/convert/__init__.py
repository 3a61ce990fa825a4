"""jdpm.convert."""
