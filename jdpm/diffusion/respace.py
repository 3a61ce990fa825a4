"""Choosing which steps of an N-step diffusion process a shorter sampler visits (improved DDPM respacing)."""


def space_timesteps(num_timesteps, section_counts):
  """The original steps kept by a respaced process.

  The N original steps are cut into len(section_counts) nearly equal consecutive sections (the first
  N % len(section_counts) sections get one extra step), and section i keeps section_counts[i] steps spread
  evenly over it, both ends included, positions rounded with Python's round-half-to-even.

  Examples with N = 1000: "250" keeps 0, 4, 8, ..., 995, 999 (strides of 999 / 249 rounded);
  "10,10,10" keeps 10 steps from each third; "ddim50" keeps 0, 20, ..., 980 (the integer stride of the
  DDIM paper, which must give exactly the requested count).

  Args:
    num_timesteps: N, the number of steps of the original process.
    section_counts: a list of ints, or a string: comma-separated ints, or "ddimK".
  Returns:
    the kept steps as a sorted list of ints (the official code returns the same steps as a set).
  """
  if isinstance(section_counts, str):
    if section_counts.startswith("ddim"):
      return _ddim_timesteps(num_timesteps, section_counts)
    try:
      section_counts = [int(part) for part in section_counts.split(",")]
    except ValueError:
      raise ValueError(f"section_counts {section_counts!r} must be comma-separated integers or 'ddimK'.") from None
  section_counts = [int(count) for count in section_counts]
  if not section_counts or any(count < 0 for count in section_counts):
    raise ValueError(f"section_counts must be a non-empty list of non-negative integers; got {section_counts}.")

  base_size, n_larger = divmod(num_timesteps, len(section_counts))
  kept = []
  start = 0
  for i, count in enumerate(section_counts):
    size = base_size + (1 if i < n_larger else 0)
    if count > size:
      raise ValueError(f"cannot take {count} steps from a section of {size} steps "
                       f"(num_timesteps={num_timesteps}, section_counts={section_counts}).")
    stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
    position = 0.0
    for _ in range(count):
      kept.append(start + round(position))
      position += stride
    start += size
  return sorted(set(kept))


def _ddim_timesteps(num_timesteps, spec):
  try:
    count = int(spec[len("ddim"):])
  except ValueError:
    raise ValueError(f"'ddimK' respacing needs an integer K; got {spec!r}.") from None
  for stride in range(1, num_timesteps):
    if len(range(0, num_timesteps, stride)) == count:
      return list(range(0, num_timesteps, stride))
  raise ValueError(f"no integer stride takes exactly {count} of {num_timesteps} steps; "
                   f"pick another count or use a plain count such as '{count}'.")
