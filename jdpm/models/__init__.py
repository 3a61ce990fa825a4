"""jdpm.models."""
