"""jdpm.data."""
