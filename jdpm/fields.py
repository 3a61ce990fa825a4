"""Keyword arguments read from JSON (a config.json, a command line, a recorded task), made hashable.

Flax modules and the frozen dataclasses that jit takes as static arguments must be hashable, so their
sequence fields need tuples where JSON gives lists.
"""


def hashable(kwargs: dict) -> dict:
  """`kwargs` with its list values as tuples (one level: the values of module and task fields)."""
  return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
