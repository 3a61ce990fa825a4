"""jdpm.eval."""
