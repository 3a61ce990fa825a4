"""The micro training runs the trainer, fault and run tests share (a 1-block DiT on `shapes/tiny`)."""

from configs import dit


def micro_config(data_dir, total_steps=4, *, hidden_size=16, checkpoint_every=2, log_every=2):
  """configs/dit.py:tiny shrunk to a 1-block DiT with patch 8, batch 8, on the tiny shapes data."""
  c = dit.get_config("tiny")
  c.model.update(dict(hidden_size=hidden_size, depth=1, num_heads=2, patch_size=8))
  c.data.update(dict(name="shapes/tiny", data_dir=str(data_dir)))
  c.update(dict(batch_size=8, total_steps=total_steps, checkpoint_every=checkpoint_every, log_every=log_every,
                sample_every=0))
  return c
