"""Model registry: ``create("DiT-XL/2", ...)`` or ``create("DiT", hidden_size=..., ...)``.

A family (e.g. "DiT") is a Flax module class whose attributes are the official constructor's
keyword names; presets (e.g. "DiT-S/2") fix its architecture keywords. Other modules add their
families with ``register``.
"""

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn


@dataclasses.dataclass(frozen=True)
class Family:
  name: str
  constructor: Callable[..., nn.Module]
  presets: Mapping[str, Mapping[str, Any]]
  defaults: Mapping[str, Any]


_FAMILIES: dict[str, Family] = {}
_PRESET_TO_FAMILY: dict[str, str] = {}


def register(family, constructor, presets=None, defaults=None):
  """Registers a model family and its named presets.

  Args:
    family: family name, also usable as a model name for custom sizes (e.g. "EDT").
    constructor: callable returning a Flax module from keyword arguments (usually the class).
    presets: {preset name: architecture kwargs}, e.g. {"EDT-S/2": {"hidden_size": 384, ...}}.
    defaults: kwargs applied before the preset and the caller's kwargs.
  """
  presets = {name: dict(kw) for name, kw in (presets or {}).items()}
  for name in [family, *presets]:
    owner = _PRESET_TO_FAMILY.get(name, family if name in _FAMILIES else None)
    if owner is not None and owner != family:
      raise ValueError(f"Model name {name!r} is already registered by family {owner!r}.")
  _FAMILIES[family] = Family(family, constructor, presets, dict(defaults or {}))
  for name in presets:
    _PRESET_TO_FAMILY[name] = family


def known_names():
  """All names accepted by ``create``: family names then presets, sorted."""
  return sorted(_FAMILIES) + sorted(_PRESET_TO_FAMILY)


def family_of(name):
  """The family name of a model or preset name; ValueError if unknown."""
  if name in _FAMILIES:
    return name
  if name in _PRESET_TO_FAMILY:
    return _PRESET_TO_FAMILY[name]
  raise ValueError(f"Unknown model name {name!r}. Known names: {', '.join(known_names())}.")


def _accepted_keywords(constructor):
  if dataclasses.is_dataclass(constructor):
    return {f.name for f in dataclasses.fields(constructor) if f.init} - {"parent", "name"}
  return None  # Unknown: let the constructor validate.


def resolve(name, **kwargs):
  """Returns (family name, full constructor kwargs) for ``create(name, **kwargs)``."""
  family = _FAMILIES[family_of(name)]
  preset = family.presets.get(name, {})
  for key, value in kwargs.items():
    if key in preset and preset[key] != value:
      raise ValueError(f"{name} fixes {key}={preset[key]!r}, got {key}={value!r}. Use the family "
                       f"name for custom sizes, e.g. create({family.name!r}, {key}={value!r}, ...).")
  full = {**family.defaults, **preset, **kwargs}
  accepted = _accepted_keywords(family.constructor)
  if accepted is not None:
    unknown = sorted(set(full) - accepted)
    if unknown:
      raise ValueError(f"Unknown keyword(s) {unknown} for {family.name}. "
                       f"Accepted: {sorted(accepted)}.")
  return family.name, full


def create(name, **kwargs):
  """Builds a model from a registered name.

  Args:
    name: a preset such as "DiT-XL/2" (architecture fixed; kwargs set the rest, e.g.
      num_classes, input_size, in_channels, learn_sigma), or a family name such as "DiT" with
      explicit sizes using the official constructor's keyword names.
    **kwargs: constructor keyword arguments.

  Returns:
    An unbound Flax module: ``variables = model.init(rng, x, t, y)``,
    ``model.apply(variables, x, t, y)`` with x NHWC.
  """
  family, full = resolve(name, **kwargs)
  return _FAMILIES[family].constructor(**full)
