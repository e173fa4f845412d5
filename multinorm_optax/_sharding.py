"""Running whole-matrix math (matrix products) on arrays sharded over Explicit axes."""

from __future__ import annotations

from collections.abc import Callable

import jax


def explicit_sharding(x: jax.Array):
  """The NamedSharding of ``x`` if any of its mesh axes are Explicit, else None."""
  sharding = getattr(jax.typeof(x), "sharding", None)
  mesh = getattr(sharding, "mesh", None)
  if mesh is None or mesh.empty or not getattr(mesh, "explicit_axes", ()):
    return None
  return sharding


def on_auto_axes(
  fn: Callable[[jax.Array], jax.Array], x: jax.Array
) -> jax.Array:
  """``fn(x)``, run with Auto axes when ``x`` lives on an Explicit mesh.

  Under Explicit axes a product that contracts a sharded dimension is a type
  error until its output sharding is spelled out; for whitening the best
  collectives depend on the shapes, so we let GSPMD choose them and only pin
  the result to the input's sharding.
  """
  sharding = explicit_sharding(x)
  if sharding is None:
    return fn(x)
  return jax.sharding.auto_axes(fn, out_sharding=sharding)(x)
