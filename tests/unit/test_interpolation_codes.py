"""Berrut and NeRCC against their formulas (docs/codes.md section 2), computed independently here."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.interpolate import CubicSpline, make_smoothing_spline

from coded_serving.codes import CODES, Berrut, CodeSpec, NeRCC, make_code
from coded_serving.codes.interpolation import make_worker_points

RNG = np.random.default_rng(0)


def alphas(k: int) -> list[float]:
    return [math.cos((2 * i + 1) * math.pi / (2 * k)) for i in range(k)]


def berrut_weights(nodes: list[float], z: float) -> list[float]:
    """w_l(z) = ((-1)^l / (z - z_l)) / sum_m ((-1)^m / (z - z_m)), l the rank in sorted order."""
    for l, node in enumerate(nodes):
        if abs(z - node) < 1e-12:
            return [1.0 if m == l else 0.0 for m in range(len(nodes))]
    rank = {index: position for position, index in enumerate(sorted(range(len(nodes)), key=lambda m: nodes[m]))}
    terms = [(-1) ** rank[l] / (z - node) for l, node in enumerate(nodes)]
    return [term / sum(terms) for term in terms]


def mask(bits: int, n: int) -> np.ndarray:
    return np.array([(bits >> i) & 1 for i in range(n)], dtype=bool)


def scipy_smoother(nodes: np.ndarray, targets: np.ndarray, lam: float) -> np.ndarray:
    """scipy's smoothing spline, lam = n * lambda, extended linearly beyond the end nodes."""
    order = np.argsort(nodes)
    t = nodes[order]
    spline = make_smoothing_spline(t, np.eye(len(t)), lam=len(t) * lam)
    slope = spline.derivative()
    inside = spline(np.clip(targets, t[0], t[-1]))
    below = (targets < t[0])[:, None] * (targets - t[0])[:, None] * slope(t[0])
    above = (targets > t[-1])[:, None] * (targets - t[-1])[:, None] * slope(t[-1])
    matrix = np.empty((len(targets), len(t)))
    matrix[:, order] = inside + below + above
    return matrix


# --- points -------------------------------------------------------------------------------------


def test_point_sets_follow_their_formulas():
    n = 7
    assert np.allclose(make_worker_points("chebyshev2", n, 4), [math.cos(i * math.pi / (n - 1)) for i in range(n)])
    assert np.allclose(make_worker_points("chebyshev1", n, 4), [math.cos((2 * i + 1) * math.pi / (2 * n)) for i in range(n)])
    assert np.allclose(make_worker_points("approxifer", n, 4), [math.cos(i * math.pi / n) for i in range(n)])
    assert np.allclose(Berrut(5, 6).data_points, alphas(5))
    assert np.allclose(Berrut(4, 6).worker_points, make_worker_points("chebyshev2", 6, 4))
    assert np.allclose(Berrut(4, 6, systematic=True).worker_points, [math.cos(math.pi / 4), math.cos(3 * math.pi / 4)])


@pytest.mark.parametrize("k", range(1, 13))
def test_midpoints_never_meet_a_data_point(k):
    for count in range(1, 3 * k + 4):
        points = make_worker_points("midpoints", count, k)
        assert len(np.unique(points)) == count
        assert np.min(np.abs(points[:, None] - np.array(alphas(k)))) > 1e-3 / k**2


# --- Berrut -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "num_workers", "systematic", "points"),
    [(4, 5, False, None), (8, 10, False, "chebyshev1"), (3, 6, False, "approxifer"), (2, 5, False, None), (5, 7, True, None)],
)
def test_berrut_encoder_matches_formula(k, num_workers, systematic, points):
    code = Berrut(k, num_workers, systematic=systematic, worker_points=points)
    expected = np.array([berrut_weights(alphas(k), z) for z in code.worker_points])
    assert code.encoder_matrix.shape == (code.num_coded, k)
    assert np.allclose(code.encoder_matrix, expected, atol=1e-12)
    queries = RNG.normal(size=(3, k, 2, 5)).astype(np.float32)
    coded = code.encode(queries)
    assert coded.dtype == np.float32 and coded.shape == (3, code.num_coded, 2, 5)
    assert np.allclose(coded, np.einsum("nk,gkab->gnab", expected, queries), atol=1e-5)


def test_berrut_worker_on_a_data_point_receives_that_query():
    code = Berrut(2, 5)  # z_1 = cos(pi/4) = alpha_0, z_3 = cos(3pi/4) = alpha_1
    queries = RNG.normal(size=(4, 2, 3)).astype(np.float32)
    coded = code.encode(queries)
    assert np.array_equal(coded[:, 1], queries[:, 0]) and np.array_equal(coded[:, 3], queries[:, 1])


@given(bits=st.integers(1, 2**7 - 1))
@settings(max_examples=60, deadline=None)
def test_berrut_decoder_matches_formula_on_any_subset(bits):
    code = Berrut(5, 7, worker_points="chebyshev1")
    available = mask(bits, 7)
    nodes = code.worker_points[available].tolist()
    expected = np.array([berrut_weights(nodes, a) for a in alphas(5)])
    results = RNG.normal(size=(2, 7, 3)).astype(np.float32)
    results[:, ~available] = np.nan  # absent workers' rows are never read
    decoded = code.decode(results, available)
    assert decoded.dtype == np.float32 and decoded.shape == (2, 5, 3)
    assert np.allclose(decoded, np.einsum("kf,gfo->gko", expected, results[:, available]), atol=1e-5)


@given(bits=st.integers(1, 2**6 - 1), systematic=st.booleans())
@settings(max_examples=60, deadline=None)
def test_berrut_reproduces_constants_from_any_subset(bits, systematic):
    """The weights sum to one: a model whose outputs are constant is decoded exactly, so is a constant query."""
    code = Berrut(4, 6, systematic=systematic)
    available = mask(bits, 6)
    constant = RNG.normal(size=(3, 1, 10)).astype(np.float32)
    decoded = code.decode(np.repeat(constant, 6, axis=1), available)
    assert np.allclose(decoded, np.repeat(constant, 4, axis=1), atol=1e-5)
    assert np.allclose(code.encode(np.repeat(constant, 4, axis=1)), np.repeat(constant, code.num_coded, axis=1), atol=1e-5)


def test_berrut_interpolates_through_its_nodes():
    """With a worker on every alpha_i (first-kind points, N = 3k) decoding the identity model is exact."""
    k = 4
    code = Berrut(k, 3 * k, worker_points="chebyshev1")
    queries = RNG.normal(size=(5, k, 6)).astype(np.float32)
    decoded = code.decode(code.encode(queries), np.ones(3 * k, dtype=bool))
    assert np.array_equal(decoded, queries)
    on_data = np.array([np.argmin(np.abs(code.worker_points - a)) for a in alphas(k)])
    only_those = np.isin(np.arange(3 * k), on_data)
    assert np.array_equal(code.decode(code.encode(queries), only_those), queries)


def test_berrut_from_one_worker_returns_its_answer():
    code = Berrut(3, 5)
    results = RNG.normal(size=(2, 5, 4)).astype(np.float32)
    available = np.zeros(5, dtype=bool)
    available[2] = True
    assert np.allclose(code.decode(results, available), np.repeat(results[:, 2:3], 3, axis=1))


def test_systematic_berrut_is_exact_with_all_originals():
    code = Berrut(4, 6, systematic=True)
    results = RNG.normal(size=(3, 6, 10)).astype(np.float32)
    for coded_available in ([True, True], [True, False], [False, False]):
        available = np.array([True] * 4 + coded_available)
        assert np.array_equal(code.decode(results, available), results[:, :4])


@given(bits=st.integers(1, 2**7 - 1))
@settings(max_examples=60, deadline=None)
def test_systematic_berrut_fits_through_originals_and_coded_points(bits):
    k, num_workers = 4, 7
    code = Berrut(k, num_workers, systematic=True)
    available = mask(bits, num_workers)
    positions = alphas(k) + code.worker_points.tolist()
    nodes = [p for p, a in zip(positions, available) if a]
    results = RNG.normal(size=(2, num_workers, 3)).astype(np.float32)
    expected = np.einsum("kf,gfo->gko", np.array([berrut_weights(nodes, a) for a in alphas(k)]), results[:, available])
    decoded = code.decode(results, available)
    assert np.allclose(decoded, expected, atol=1e-5)
    answered = available[:k]
    assert np.array_equal(decoded[:, answered], results[:, :k][:, answered])


# --- NeRCC --------------------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.0, 1e-4, 1e-2, 1.0])
@pytest.mark.parametrize(("k", "num_workers", "points"), [(5, 7, None), (8, 10, "chebyshev1"), (6, 9, "approxifer")])
def test_nercc_encoder_is_scipys_smoothing_spline(k, num_workers, points, lam):
    code = NeRCC(k, num_workers, lambda_enc=lam, lambda_dec=0.1, worker_points=points)
    expected = scipy_smoother(code.data_points, code.worker_points, lam)
    assert np.allclose(code.encoder_matrix, expected, atol=1e-8)
    queries = RNG.normal(size=(2, k, 3, 4)).astype(np.float32)
    assert np.allclose(code.encode(queries), np.einsum("nk,gkab->gnab", expected, queries), atol=1e-4)


def test_scipy_lam_is_n_times_codes_lambda():
    """docs/codes.md's objective (1/n) sum (u(t_i) - y_i)^2 + lambda int u''^2 is scipy's with lam = n lambda."""
    t = np.sort(RNG.uniform(-1, 1, 8))
    y = np.sin(3 * t)
    lam = 0.01

    def objective(values: np.ndarray, curvature: float) -> float:
        return float(np.mean((values - y) ** 2) + lam * curvature)

    fitted = make_smoothing_spline(t, y, lam=len(t) * lam)
    grid = np.linspace(t[0], t[-1], 20001)
    fitted_curvature = np.trapz(fitted.derivative(2)(grid) ** 2, grid)
    best = objective(fitted(t), fitted_curvature)
    for other_lam in (len(t) * lam / 3, len(t) * lam * 3, lam):
        other = make_smoothing_spline(t, y, lam=other_lam)
        assert best < objective(other(t), np.trapz(other.derivative(2)(grid) ** 2, grid))


@given(bits=st.integers(1, 2**9 - 1), lam=st.sampled_from([0.0, 1e-3, 0.1]))
@settings(max_examples=80, deadline=None)
def test_nercc_decoder_is_scipys_smoothing_spline_on_any_subset(bits, lam):
    code = NeRCC(6, 9, lambda_enc=0.01, lambda_dec=lam)
    available = mask(bits, 9)
    results = RNG.normal(size=(2, 9, 3)).astype(np.float32)
    results[:, ~available] = np.nan
    decoded = code.decode(results, available)
    assert decoded.dtype == np.float32 and decoded.shape == (2, 6, 3)
    nodes = code.worker_points[available]
    if len(nodes) >= 5:  # scipy's smallest problem
        expected = np.einsum("kf,gfo->gko", scipy_smoother(nodes, code.data_points, lam), results[:, available])
        assert np.allclose(decoded, expected, atol=1e-4)
    assert np.all(np.isfinite(decoded))


@given(bits=st.integers(1, 2**7 - 1), systematic=st.booleans(), lam=st.sampled_from([0.0, 0.05, 10.0]))
@settings(max_examples=80, deadline=None)
def test_nercc_reproduces_lines_from_two_points_on(bits, systematic, lam):
    """Lines cost no curvature, so results that are linear in the worker points decode exactly."""
    code = NeRCC(4, 7, lambda_enc=lam, lambda_dec=lam, systematic=systematic)
    available = mask(bits, 7)
    positions = np.concatenate([code.data_points, code.worker_points]) if systematic else code.worker_points
    intercept, slope = RNG.normal(size=(2, 1, 1, 5))
    results = (intercept + slope * positions[None, :, None]).astype(np.float32)
    decoded = code.decode(results, available)
    if available.sum() >= 2:
        assert np.allclose(decoded, intercept + slope * code.data_points[None, :, None], atol=1e-4)
    else:
        assert np.allclose(decoded, results[:, available], atol=1e-6)


def test_nercc_from_one_worker_returns_its_answer():
    code = NeRCC(4, 6, lambda_enc=0.01, lambda_dec=0.01)
    results = RNG.normal(size=(2, 6, 4)).astype(np.float32)
    available = np.eye(6, dtype=bool)[3]
    assert code.decodable(available)
    assert np.allclose(code.decode(results, available), np.repeat(results[:, 3:4], 4, axis=1))


def test_nercc_approaches_interpolation_as_lambda_vanishes():
    k = 6
    interpolating = CubicSpline(np.sort(alphas(k)), np.eye(k)[np.argsort(alphas(k))], bc_type="natural")
    inside = [z for z in make_worker_points("chebyshev1", 8, k) if min(alphas(k)) <= z <= max(alphas(k))]
    exact = interpolating(np.array(inside))
    distances = []
    for lam in (1e-1, 1e-3, 1e-5, 1e-7, 0.0):
        code = NeRCC(k, 8, lambda_enc=lam, lambda_dec=lam, worker_points="chebyshev1")
        rows = np.isin(code.worker_points, inside)
        distances.append(np.abs(code.encoder_matrix[rows] - exact).max())
    assert all(a > b for a, b in zip(distances, distances[1:]))
    assert distances[-1] < 1e-12


def test_nercc_tends_to_the_least_squares_line_as_lambda_grows():
    k = 6
    code = NeRCC(k, 8, lambda_enc=1e9, lambda_dec=1e9)
    design = np.stack([np.ones(k), code.data_points], axis=1)
    line = np.stack([np.ones(8), code.worker_points], axis=1) @ np.linalg.pinv(design)
    assert np.allclose(code.encoder_matrix, line, atol=1e-6)


def test_systematic_nercc_is_exact_with_all_originals():
    code = NeRCC(4, 5, lambda_enc=0.1, lambda_dec=0.1, systematic=True)
    results = RNG.normal(size=(3, 5, 10)).astype(np.float32)
    for parity in (True, False):
        assert np.array_equal(code.decode(results, np.array([True] * 4 + [parity])), results[:, :4])


@given(bits=st.integers(1, 2**8 - 1))
@settings(max_examples=60, deadline=None)
def test_systematic_nercc_smooths_through_originals_and_coded_points(bits):
    k, num_workers, lam = 5, 8, 0.02
    code = NeRCC(k, num_workers, lambda_enc=0.01, lambda_dec=lam, systematic=True)
    available = mask(bits, num_workers)
    nodes = np.concatenate([code.data_points, code.worker_points])[available]
    missing = ~available[:k]
    results = RNG.normal(size=(2, num_workers, 3)).astype(np.float32)
    decoded = code.decode(results, available)
    assert np.array_equal(decoded[:, ~missing], results[:, :k][:, ~missing])
    if len(nodes) >= 5 and missing.any():
        smoother = scipy_smoother(nodes, code.data_points[missing], lam)
        assert np.allclose(decoded[:, missing], np.einsum("kf,gfo->gko", smoother, results[:, available]), atol=1e-4)


# --- shared contract ----------------------------------------------------------------------------

CODE_FACTORIES = {
    "berrut": lambda: Berrut(4, 6),
    "berrut-systematic": lambda: Berrut(4, 6, systematic=True),
    "nercc": lambda: NeRCC(4, 6, lambda_enc=0.01, lambda_dec=0.01),
    "nercc-systematic": lambda: NeRCC(4, 6, lambda_enc=0.01, lambda_dec=0.01, systematic=True),
}


@pytest.mark.parametrize("name", CODE_FACTORIES)
@pytest.mark.parametrize("out_shape", [(), (10,), (2, 3, 4)])
def test_shapes_and_groups_are_independent(name, out_shape):
    code = CODE_FACTORIES[name]()
    queries = RNG.normal(size=(5, 4, 1, 6, 6))
    coded = code.encode(queries)
    assert coded.shape == (5, code.num_coded, 1, 6, 6) and coded.dtype == np.float32
    assert np.allclose(code.encode(queries[2:3]), coded[2:3], atol=1e-6)
    results = RNG.normal(size=(5, 6, *out_shape))
    available = np.array([True, False, True, True, False, True])
    decoded = code.decode(results, available)
    assert decoded.shape == (5, 4, *out_shape) and decoded.dtype == np.float32
    assert np.allclose(code.decode(results[3:4], available), decoded[3:4], atol=1e-6)


@pytest.mark.parametrize("name", CODE_FACTORIES)
def test_wrong_shapes_are_refused(name):
    code = CODE_FACTORIES[name]()
    with pytest.raises(ValueError, match="queries must be"):
        code.encode(np.zeros((2, 3, 5)))
    with pytest.raises(ValueError, match="queries must be"):
        code.encode(np.zeros(4))
    with pytest.raises(ValueError, match="results must be"):
        code.decode(np.zeros((2, 5, 10)), np.ones(6, dtype=bool))
    with pytest.raises(ValueError, match="available must be"):
        code.decode(np.zeros((2, 6, 10)), np.ones(5, dtype=bool))
    assert not code.decodable(np.zeros(6, dtype=bool))
    with pytest.raises(ValueError, match="cannot decode"):
        code.decode(np.zeros((2, 6, 10)), np.zeros(6, dtype=bool))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Berrut(0, 3), "k must be"),
        (lambda: Berrut(4, 3), "num_workers"),
        (lambda: Berrut(4, 4, systematic=True), "num_workers"),
        (lambda: Berrut(4, 5, systematic=True, worker_points="chebyshev2"), "at least 2"),
        (lambda: Berrut(4, 6, worker_points="legendre"), "unknown worker point set"),
        (lambda: Berrut(2, 3, worker_points=[0.0, 0.5]), "3 finite numbers"),
        (lambda: Berrut(2, 3, worker_points=[0.0, 0.5, 0.5]), "distinct"),
        (lambda: Berrut(3, 4, systematic=True, worker_points="chebyshev1"), "coincide"),
        (lambda: NeRCC(4, 6, lambda_enc=-1.0, lambda_dec=0.0), "lambdas"),
    ],
)
def test_bad_parameters_are_refused(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_codes_are_registered():
    assert CODES["berrut"] is Berrut and CODES["nercc"] is NeRCC
    berrut = make_code(CodeSpec.from_dict({"kind": "berrut", "k": 4, "params": {"num_workers": 6, "worker_points": "chebyshev1"}}))
    assert isinstance(berrut, Berrut) and berrut.num_workers == 6
    nercc = make_code(CodeSpec("nercc", 4, {"num_workers": 5, "lambda_enc": 0.1, "lambda_dec": 0.2, "systematic": True}))
    assert isinstance(nercc, NeRCC) and nercc.num_coded == 1
