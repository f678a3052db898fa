"""The standalone encoder and decoder models' logic (coded_serving.runtime.codec), without Triton."""

import numpy as np
import pytest

from coded_serving.codes import Berrut, CodedInvNet, ParMAddition
from coded_serving.codes.invnet import MLPHead
from coded_serving.runtime.codec import decode_batch, encode_batch

rng = np.random.default_rng(1)


def test_encoder_refuses_non_finite_queries_and_keeps_the_dtype():
    code = ParMAddition(2)
    queries = rng.random((3, 2, 4), dtype=np.float32).astype(np.float16)
    coded, error = encode_batch(code, queries)
    assert error is None and coded.dtype == np.float16 and coded.shape == (3, 1, 4)
    queries[1, 0, 2] = np.nan
    assert encode_batch(code, queries) == (None, "input 'queries' contains NaN or infinite values")


def test_decoder_uses_each_items_own_availability_row():
    code = ParMAddition(2)
    outputs = rng.normal(size=(4, 2, 10)).astype(np.float32)
    results = np.concatenate([outputs, outputs.sum(axis=1, keepdims=True)], axis=1)
    available = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1], [1, 1, 1]], bool)
    garbage = results.copy()
    garbage[~available] = 1e6  # absent rows are never read
    estimates, error = decode_batch(code, garbage, available)
    assert error is None
    np.testing.assert_allclose(estimates, outputs, atol=1e-4)


def test_decoder_names_an_undecodable_row_and_non_finite_present_values():
    code = ParMAddition(2)
    results = np.zeros((2, 3, 10), np.float32)
    _, error = decode_batch(code, results, np.array([[1, 0, 0], [1, 1, 0]], bool))
    assert error == "cannot decode with available workers [0]"
    results[1, 2, 0] = np.inf
    _, error = decode_batch(code, results, np.array([[1, 1, 0], [0, 1, 1]], bool))
    assert error == "input 'results' contains NaN or infinite values where available"


def test_decoder_applies_the_head_of_coded_invnet(tmp_path):
    """Every answer, decoded or not, leaves the decoder as logits: h(k z_p - sum_{i != j} z_i)."""
    head = MLPHead([(rng.normal(size=(6, 5)).astype(np.float32), rng.normal(size=6).astype(np.float32)),
                    (rng.normal(size=(3, 6)).astype(np.float32), rng.normal(size=3).astype(np.float32))])
    head.save(tmp_path / "head.npz")
    code = CodedInvNet(2, resource_dir=tmp_path)
    features = rng.normal(size=(2, 2, 5)).astype(np.float32)
    results = np.concatenate([features, features.mean(axis=1, keepdims=True)], axis=1)
    estimates, error = decode_batch(code, results, np.array([[0, 1, 1], [1, 1, 0]], bool))
    assert error is None and estimates.shape == (2, 2, 3)
    np.testing.assert_allclose(estimates, head(features.reshape(-1, 5)).reshape(2, 2, 3), atol=1e-4)


@pytest.mark.parametrize("code", [ParMAddition(3), Berrut(2, 4), CodedInvNet(2)])
def test_min_available_is_what_decodable_checks(code):
    assert code.decodable(np.arange(code.num_workers) < code.min_available)
    assert not code.decodable(np.arange(code.num_workers) < code.min_available - 1)
