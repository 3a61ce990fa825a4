"""jdpm.diffusion."""
