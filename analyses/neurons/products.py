"""The k highest and lowest products of many vectors with the rows of one matrix, blockwise on the default device.

The atlas's update scores (each neuron's update against the token embeddings, `analyses.neurons.facts`) and the
related neurons (one layer's updates against another layer's fc1 rows, `analyses.neurons.related`) both score
many query vectors q against every row of one matrix and keep each query's k highest and k lowest scores:

    score[q, r] = rows[r, :] . (project @ queries[:, q])        (project: the model's project_out, or none)

or, with `cosine`, that product divided by the norms of the row and of the (projected) query (0 where a norm is
0). `on_device` puts the matrix on jax's default device (a GPU where there is one) once; `top_products` sends
the queries over in blocks of `block` columns, the last one padded with zeros so that every block has one shape
and compiles once, and `jax.lax.top_k` picks the k highest and the k lowest of each row of scores on the device:
only [block, k] ids and scores come back to the host, never [block, rows]. `product_rows` brings whole rows of
scores back, for the few queries that need them (a detector's trigger ranks).

Products are float32: inputs in their stored dtype (float16 / bfloat16 products are exact in float32), float32
accumulation (`preferred_element_type`) at `Precision.HIGHEST` (no TF32 rounding on a GPU). On the CPU the
matrix is cast to float32 once (XLA's CPU dot has no fast half-precision path).

Order and ties: highest first (lowest first at the low end); equal scores list the lower row id first
(`jax.lax.top_k`'s documented rule; `analyses.suppression.lowest` keeps the same rule on the host). A score of
-0 is made +0 first: top_k orders -0 below +0, where numpy counts them equal.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from opt_jax.errors import InputError

BLOCK = 256  # queries scored at once: float32 [block, rows] on the device
_HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class Matrix:
    """A matrix put on the device to be scored against: rows [r, e], project [e, d] or None, and with `cosine`
    each row's inverse norm [r] (0 for a zero row), else None."""

    rows: jax.Array
    project: jax.Array | None
    inverse_norms: jax.Array | None

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, the length of a query: d with a project, else e)."""
        width = self.rows.shape[1] if self.project is None else self.project.shape[1]
        return int(self.rows.shape[0]), int(width)


@dataclasses.dataclass
class Top:
    """Per query: the k highest scores and their row ids, highest first; the k lowest, lowest first."""

    high_ids: np.ndarray  # int64 [q, k]
    high: np.ndarray  # float32 [q, k]
    low_ids: np.ndarray  # int64 [q, k]
    low: np.ndarray  # float32 [q, k]


def on_device(rows, project=None, cosine: bool = False) -> Matrix:
    """`rows` [r, e] (and `project` [e, d]) on the default device, in their stored dtype (float32 on the CPU);
    with `cosine` their rows' inverse norms too."""
    rows, project = (None if a is None else jnp.asarray(_compute_dtype(a)) for a in (rows, project))
    if project is not None and project.shape[0] != rows.shape[1]:
        raise InputError(f"rows of width {rows.shape[1]} cannot score through a projection of shape {project.shape}")
    return Matrix(rows, project, _inverse_norms(rows) if cosine else None)


def top_products(matrix: Matrix, queries, k: int, ids=None, block: int = BLOCK) -> Top:
    """The k highest and lowest scores of the columns `ids` of `queries` [d, n] (default all; any array whose
    columns can be gathered, e.g. `fc1.T`) against `matrix`, `block` queries at a time (see the module
    docstring); k is cut to the number of rows."""
    ids = _ids(queries, ids, matrix)
    k = min(int(k), matrix.shape[0])
    parts = [_block_top(matrix.rows, matrix.project, matrix.inverse_norms, _padded(queries, chunk, block), k)
             for chunk in _chunks(ids, block)]  # dispatched without waiting: the device works while the host gathers
    out = [np.concatenate([np.asarray(p[i]) for p in parts])[:len(ids)] if parts else
           np.zeros((0, k), np.int32 if i % 2 == 0 else np.float32) for i in range(4)]
    return Top(out[0].astype(np.int64), out[1], out[2].astype(np.int64), out[3])


def product_rows(matrix: Matrix, queries, ids=None, block: int = BLOCK) -> np.ndarray:
    """Every score of the columns `ids` of `queries` against `matrix`: float32 [len(ids), rows] on the host."""
    ids = _ids(queries, ids, matrix)
    parts = [_block_scores(matrix.rows, matrix.project, matrix.inverse_norms, _padded(queries, chunk, block))
             for chunk in _chunks(ids, block)]
    if not parts:
        return np.zeros((0, matrix.shape[0]), np.float32)
    return np.concatenate([np.asarray(p) for p in parts])[:len(ids)]


@functools.partial(jax.jit, static_argnames="k")
def _block_top(rows, project, inverse_norms, queries, k: int):
    """(high ids, high, low ids, low) [b, k] of one block of queries [b, d]."""
    scores = _scores(rows, project, inverse_norms, queries)  # [b, r]
    high, high_ids = jax.lax.top_k(scores, k)  # [b, k]
    low, low_ids = jax.lax.top_k(_plus_zero(-scores), k)  # [b, k]
    return high_ids, high, low_ids, -low


@jax.jit
def _block_scores(rows, project, inverse_norms, queries):
    """float32 [b, r]: one block's whole rows of scores, for `product_rows`."""
    return _scores(rows, project, inverse_norms, queries)


def _scores(rows, project, inverse_norms, queries):  # [r, e], [e, d] or None, [r] or None, [b, d]
    """float32 [b, r]: each query's scores against every row (cosines with `inverse_norms`), -0 made +0.

    The queries come as rows [b, e]: XLA's CPU dot of [r, e] with [e, b] columns took 2.7x as long (66b widths)."""
    if project is not None:
        queries = jnp.einsum("ed,bd->be", project, queries, precision=_HIGHEST,
                             preferred_element_type=jnp.float32)  # [b, e]
    scores = jnp.einsum("re,be->br", rows, queries, precision=_HIGHEST, preferred_element_type=jnp.float32)  # [b, r]
    if inverse_norms is not None:
        q = queries.astype(jnp.float32)  # [b, e]
        lengths = jnp.sqrt(jnp.einsum("be,be->b", q, q, precision=_HIGHEST))  # [b]
        scores = scores * inverse_norms[None, :] * _inverse(lengths)[:, None]  # [b, r]
    return _plus_zero(scores)


def _inverse_norms(rows):  # [r, e]
    """float32 [r]: 1 / |row| (0 for a zero row)."""
    r = rows.astype(jnp.float32)  # [r, e]
    return _inverse(jnp.sqrt(jnp.einsum("re,re->r", r, r, precision=_HIGHEST)))  # [r]


def _inverse(x):
    return jnp.where(x > 0, 1.0 / jnp.where(x > 0, x, 1.0), 0.0)


def _plus_zero(x):
    return jnp.where(x == 0, jnp.zeros_like(x), x)


def _compute_dtype(a) -> np.ndarray:
    """The array as the device computes it: as stored, float32 on the CPU."""
    a = np.asarray(a)
    return a.astype(np.float32) if jax.default_backend() == "cpu" and a.dtype != np.float32 else a


def _ids(queries, ids, matrix: Matrix) -> np.ndarray:
    """The query columns asked for, checked against the queries' shape and the matrix's width."""
    if queries.shape[0] != matrix.shape[1]:
        raise InputError(f"queries of length {queries.shape[0]} against a matrix that takes {matrix.shape[1]}")
    ids = np.arange(queries.shape[1]) if ids is None else np.asarray(ids, np.int64).reshape(-1)
    if len(ids) and not (0 <= ids.min() and ids.max() < queries.shape[1]):
        raise InputError(f"query ids must lie in 0..{queries.shape[1] - 1}")
    return ids


def _chunks(ids: np.ndarray, block: int):
    if block < 1:
        raise InputError(f"block must be at least 1, got {block}")
    return [ids[start:start + block] for start in range(0, len(ids), block)]


def _padded(queries, chunk: np.ndarray, block: int) -> np.ndarray:
    """Columns `chunk` of queries [d, n] as rows [block, d], zeros past them: every block has one compiled shape."""
    out = np.zeros((block, queries.shape[0]), queries.dtype)  # [block, d]
    out[:len(chunk)] = queries[:, chunk].T
    return out
