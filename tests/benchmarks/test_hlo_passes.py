"""benchmarks/hlo_passes.py: full-size reads and writes counted in compiled HLO."""

import jax

from benchmarks import hlo_passes


def test_hlo_count_sees_one_fused_elementwise_update_and_flags_loops():
  p = jax.ShapeDtypeStruct((64, 48), jax.numpy.float32)
  sgd = jax.jit(lambda p, g: p - 0.1 * g).lower(p, p).compile().as_text()
  assert hlo_passes.count_full_size_traffic(sgd, 64 * 48) == {
    "reads": 2,
    "writes": 1,
    "passes": 3.0,
    "has_loop": False,
    "has_conditional": False,
    "passes_all_branches": 3.0,
  }

  def repeated(p, g, n):
    return jax.lax.fori_loop(0, n, lambda _, x: x - 0.1 * g, p)

  looped = jax.jit(repeated).lower(p, p, 3).compile().as_text()
  counts = hlo_passes.count_full_size_traffic(looped, 64 * 48)
  assert counts["has_loop"] and counts["reads"] >= 2 and counts["writes"] >= 1


def test_hlo_count_adds_the_cheapest_branch_of_a_conditional():
  p = jax.ShapeDtypeStruct((64, 48), jax.numpy.float32)

  def guarded(p, g):
    ok = jax.numpy.all(jax.numpy.isfinite(jax.numpy.sum(g, axis=0)))
    scale = jax.lax.cond(
      ok,
      lambda: jax.numpy.ones((48,)),
      lambda: 1 / jax.numpy.max(jax.numpy.abs(g), axis=0),
    )
    return p - 0.1 * g * scale

  hlo = jax.jit(guarded).lower(p, p).compile().as_text()
  counts = hlo_passes.count_full_size_traffic(hlo, 64 * 48)
  assert counts["has_conditional"]
  # sum(g), then p - 0.1 g s: the fallback's max|g| read only in the worst case.
  assert counts["passes"] == 4.0
  assert counts["passes_all_branches"] >= 5.0
