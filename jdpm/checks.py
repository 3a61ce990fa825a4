"""Argument checks shared by every folder (plain Python: no JAX, no Flax)."""


def check_choice(name, value, choices):
  """Raises a ValueError naming `name`, the bad `value` and the allowed `choices` unless value is one."""
  if value not in choices:
    raise ValueError(f"Unknown {name} {value!r}; choose one of {tuple(choices)}.")
