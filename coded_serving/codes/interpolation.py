"""Training-free codes: Berrut rational interpolation (BACC / ApproxIFER) and NeRCC smoothing splines.

The k queries are read as samples x_i = u(alpha_i) of a curve u at the Chebyshev points of the
first kind alpha_i = cos((2i+1) pi / (2k)); coded worker n runs the unchanged model on u(z_n); the
decoder fits a curve through the results that came back and reads it off at the alpha_i
(docs/codes.md section 2). Both codes are linear: encoding is a fixed [num_coded, k] matrix and decoding
a [k, |available|] matrix built, then cached, for each set of workers that answered.

Systematic variant: workers 0..k-1 receive the queries themselves (they sit at alpha_i) and only
workers k..N-1 receive coded points; the decoder fits through every available point, the
originals at alpha_i included, and copies the originals that answered unchanged.

Worker point sets (``worker_points``; M = number of coded workers):

- ``"chebyshev2"``: cos(n pi / (M-1)), endpoints included (BACC). Default of the non-systematic codes,
  as in the papers. With M = k+1 every alpha_i lies midway (in angle) between two workers, the worst
  place for an interpolant, which is why one straggler costs so much there (docs/codes.md section 5).
- ``"chebyshev1"``: cos((2n+1) pi / (2M)), interior points; with M = k+1 they never meet an alpha_i,
  the outer alpha_i sit next to a worker and only the middle ones near midway.
- ``"approxifer"``: cos(n pi / M), the set of ApproxIFER's public code.
- ``"midpoints"``: M points spread evenly over cos(j pi / (m k)), j = 0..mk, with m the smallest odd
  integer giving at least M of them. The angles j pi / (m k) never equal (2i+1) pi / (2k), so these
  points never coincide with an alpha_i. Default of the systematic codes, whose coded points must not
  duplicate an original (with m = 1 they are the gaps between consecutive alpha_i and the ends).
- an explicit sequence of M distinct floats.

In the non-systematic codes a worker point may coincide with an alpha_i (e.g. chebyshev2 at k=2, N=5);
that worker then simply receives x_i.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

import numpy as np

from .base import Code

_TOL = 1e-9  # points closer than this are the same point

PointSet = str | Sequence[float]


def chebyshev_data_points(k: int) -> np.ndarray:
    """alpha_i = cos((2i+1) pi / (2k)), where the k queries sit on the curve."""
    return np.cos((2 * np.arange(k) + 1) * np.pi / (2 * k))


def make_worker_points(kind: PointSet, count: int, k: int) -> np.ndarray:
    """The ``count`` coded workers' points for k queries (the sets are described in the module docstring)."""
    n = np.arange(count)
    if not isinstance(kind, str):
        points = np.asarray(kind, dtype=np.float64)
        if points.shape != (count,) or not np.all(np.isfinite(points)):
            raise ValueError(f"worker_points must be {count} finite numbers, got {kind!r}")
    elif kind == "chebyshev2":
        if count < 2:
            raise ValueError("chebyshev2 worker points need at least 2 coded workers")
        points = np.cos(n * np.pi / (count - 1))
    elif kind == "chebyshev1":
        points = np.cos((2 * n + 1) * np.pi / (2 * count))
    elif kind == "approxifer":
        points = np.cos(n * np.pi / count)
    elif kind == "midpoints":
        m = max(1, int(np.ceil((count - 1) / k)))
        m += 1 - m % 2
        grid_size = m * k + 1
        # spacing grid_size / count >= 1, so the chosen indices are distinct
        j = np.floor((n + 0.5) * grid_size / count).astype(int)
        points = np.cos(j * np.pi / (m * k))
    else:
        raise ValueError(f"unknown worker point set {kind!r}; known: approxifer, chebyshev1, chebyshev2, midpoints")
    gaps = np.diff(np.sort(points))
    if np.any(gaps <= _TOL):
        raise ValueError(f"worker points must be distinct, got {points.tolist()}")
    return points


def berrut_matrix(nodes: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """[len(targets), len(nodes)] weights of Berrut's interpolant r(z) = sum_l w_l(z) f_l.

    w_l(z) = ((-1)^l / (z - z_l)) / sum_m ((-1)^m / (z - z_m)), with l the rank of z_l in sorted
    order; a target on a node gets weight 1 on that node (the limit of the formula).
    """
    signs = np.empty(len(nodes))
    signs[np.argsort(nodes, kind="stable")] = (-1.0) ** np.arange(len(nodes))
    diff = targets[:, None] - nodes[None, :]
    hit = np.abs(diff) <= _TOL
    terms = signs / np.where(hit, 1.0, diff)
    weights = terms / terms.sum(axis=1, keepdims=True)
    on_node = hit.any(axis=1)
    weights[on_node] = hit[on_node]
    return weights


def smoothing_spline_matrix(nodes: np.ndarray, targets: np.ndarray, lam: float) -> np.ndarray:
    """[len(targets), len(nodes)] linear smoother of the natural cubic smoothing spline.

    g = argmin (1/n) sum_i (g(t_i) - y_i)^2 + lam * integral g''^2. Reinsch's algorithm (Green &
    Silverman, ch. 2) with a = n lam: interior second derivatives gamma = (R + a Q^T Q)^-1 Q^T y and
    node values g = y - a Q gamma (equal to (I + a Q R^-1 Q^T)^-1 y, but well conditioned as lam grows), then
    the piecewise cubic between nodes and the straight line beyond them (the minimiser over the
    whole line is linear outside the nodes; scipy's BSpline would extend the end cubics instead).
    Two nodes give the line through them whatever lam; one node gives that constant (every line
    through it is a minimiser; the flat one is the natural pick, and what Berrut returns too).
    """
    n = len(nodes)
    if n == 1:
        return np.ones((len(targets), 1))
    order = np.argsort(nodes)
    t = nodes[order]
    h = np.diff(t)
    q = np.zeros((n, n - 2))
    r = np.zeros((n - 2, n - 2))
    for j in range(n - 2):
        q[j, j], q[j + 1, j], q[j + 2, j] = 1 / h[j], -1 / h[j] - 1 / h[j + 1], 1 / h[j + 1]
        r[j, j] = (h[j] + h[j + 1]) / 3
        if j + 1 < n - 2:
            r[j, j + 1] = r[j + 1, j] = h[j + 1] / 6
    gamma = np.linalg.solve(r + n * lam * q.T @ q, q.T)  # empty for two nodes: a line
    values = np.eye(n) - n * lam * q @ gamma

    # value at x in [t_j, t_j+1] (Green & Silverman eq. 2.5), as weights on g and on gamma
    x = np.clip(targets, t[0], t[-1])
    j = np.clip(np.searchsorted(t, x, side="right") - 1, 0, n - 2)
    rows = np.arange(len(targets))
    left, right, width = x - t[j], t[j + 1] - x, h[j]
    on_g = np.zeros((len(targets), n))
    on_gamma = np.zeros((len(targets), n))
    on_g[rows, j] = right / width
    on_g[rows, j + 1] = left / width
    on_gamma[rows, j] = -left * right * (1 + right / width) / 6
    on_gamma[rows, j + 1] = -left * right * (1 + left / width) / 6

    # beyond the ends: g(t_1) - d g'(t_1) with g'(t_1) = (g_2 - g_1)/h_1 - h_1 gamma_2 / 6,
    # and g(t_n) + d g'(t_n) with g'(t_n) = (g_n - g_n-1)/h_n-1 + h_n-1 gamma_n-1 / 6
    below, above = targets < t[0], targets > t[-1]
    d = t[0] - targets[below]
    on_g[below, 0] += d / h[0]
    on_g[below, 1] -= d / h[0]
    on_gamma[below, 1] += d * h[0] / 6
    d = targets[above] - t[-1]
    on_g[above, -1] += d / h[-1]
    on_g[above, -2] -= d / h[-1]
    on_gamma[above, -2] += d * h[-1] / 6

    sorted_matrix = on_g @ values + on_gamma[:, 1:-1] @ gamma  # gamma is zero at both ends
    matrix = np.empty_like(sorted_matrix)
    matrix[:, order] = sorted_matrix
    return matrix


class _CurveCode(Code):
    """What Berrut and NeRCC share: the points, the shape contract and the per-mask decoder cache."""

    def __init__(self, k: int, num_workers: int, systematic: bool, worker_points: PointSet | None):
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if num_workers < k + int(systematic):
            raise ValueError(f"num_workers must be at least k{' + 1' if systematic else ''}, got {num_workers} for k={k}")
        self.k = k
        self.num_workers = num_workers
        self.systematic = systematic
        self.data_points = chebyshev_data_points(k)
        kind = worker_points if worker_points is not None else ("midpoints" if systematic else "chebyshev2")
        self.worker_points = make_worker_points(kind, self.num_coded, k)
        if systematic and np.any(np.abs(self.worker_points[:, None] - self.data_points) <= _TOL):
            raise ValueError(f"coded worker points {self.worker_points.tolist()} coincide with data points; use 'midpoints'")
        # where each worker's answer sits on the curve
        self.positions = np.concatenate([self.data_points, self.worker_points]) if systematic else self.worker_points
        self.encoder_matrix = self._encoding_matrix(self.data_points, self.worker_points)
        self._decoders: dict[bytes, np.ndarray] = {}

    @abstractmethod
    def _encoding_matrix(self, nodes: np.ndarray, targets: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _decoding_matrix(self, nodes: np.ndarray, targets: np.ndarray) -> np.ndarray: ...

    min_available = 1

    def decoder_matrix(self, available: np.ndarray) -> np.ndarray:
        """[k, |available|]: estimates = matrix @ the available workers' results, in worker order.

        Originals that answered (systematic) get a one-hot row, so they come back bit-exact.
        """
        available = np.asarray(available, dtype=bool)
        key = available.tobytes()
        if key not in self._decoders:
            matrix = np.zeros((self.k, int(available.sum())))
            answered = available[: self.k] if self.systematic else np.zeros(self.k, dtype=bool)
            matrix[np.flatnonzero(answered), np.arange(answered.sum())] = 1.0
            matrix[~answered] = self._decoding_matrix(self.positions[available], self.data_points[~answered])
            self._decoders[key] = matrix.astype(np.float32)
        return self._decoders[key]

    def encode(self, queries: np.ndarray) -> np.ndarray:
        queries = self._check_queries(queries)
        return _apply(self.encoder_matrix.astype(np.float32), queries)

    def decode(self, results: np.ndarray, available: np.ndarray) -> np.ndarray:
        results, available = self._check_results(results, available)
        return _apply(self.decoder_matrix(available), results[:, available])


def _apply(matrix: np.ndarray, stacked: np.ndarray) -> np.ndarray:
    """matrix [a, b] applied along axis 1 of stacked [G, b, *rest] -> [G, a, *rest]."""
    return np.moveaxis(np.tensordot(matrix, stacked, axes=([1], [1])), 0, 1).astype(np.float32, copy=False)


class Berrut(_CurveCode):
    """Berrut rational interpolation at both ends (BACC, ApproxIFER).

    Pole-free for any node set, so any single worker suffices to decode (then every estimate is
    that worker's answer). Non-systematic results are approximate even with no straggler.
    """

    def __init__(self, k: int, num_workers: int, systematic: bool = False, worker_points: PointSet | None = None):
        super().__init__(k, num_workers, systematic, worker_points)

    def _encoding_matrix(self, nodes: np.ndarray, targets: np.ndarray) -> np.ndarray:
        return berrut_matrix(nodes, targets)

    def _decoding_matrix(self, nodes: np.ndarray, targets: np.ndarray) -> np.ndarray:
        return berrut_matrix(nodes, targets)


class NeRCC(_CurveCode):
    """NeRCC: natural cubic smoothing splines at both ends (Moradi, Maddah-Ali et al., 2024).

    lambda_enc and lambda_dec weigh curvature against fit with docs/codes.md's (1/n) normalisation
    (scipy's make_smoothing_spline lam = n * lambda); they must be tuned per model and (N, k, S).
    lambda = 0 is natural cubic spline interpolation. Decodable from any single worker: one point
    returns that constant, two points the line through them (see ``smoothing_spline_matrix``).
    """

    def __init__(
        self,
        k: int,
        num_workers: int,
        lambda_enc: float,
        lambda_dec: float,
        systematic: bool = False,
        worker_points: PointSet | None = None,
    ):
        if lambda_enc < 0 or lambda_dec < 0:
            raise ValueError(f"lambdas must be >= 0, got lambda_enc={lambda_enc}, lambda_dec={lambda_dec}")
        self.lambda_enc = float(lambda_enc)
        self.lambda_dec = float(lambda_dec)
        super().__init__(k, num_workers, systematic, worker_points)

    def _encoding_matrix(self, nodes: np.ndarray, targets: np.ndarray) -> np.ndarray:
        return smoothing_spline_matrix(nodes, targets, self.lambda_enc)

    def _decoding_matrix(self, nodes: np.ndarray, targets: np.ndarray) -> np.ndarray:
        return smoothing_spline_matrix(nodes, targets, self.lambda_dec)
