"""ParM's encoders and subtraction decoder against docs/codes.md section 1."""

import numpy as np
import pytest

from coded_serving.codes import CodeSpec, ParMAddition, ParMConcatenation, make_code

rng = np.random.default_rng(0)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_addition_encoder_is_the_sum(k):
    queries = rng.random((5, k, 1, 28, 28), dtype=np.float32)
    coded = ParMAddition(k).encode(queries)
    assert coded.shape == (5, 1, 1, 28, 28)
    np.testing.assert_allclose(coded[:, 0], sum(queries[:, i] for i in range(k)), rtol=1e-6)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_subtraction_decoder_recovers_any_single_missing_output(k):
    code = ParMAddition(k)
    outputs = rng.normal(size=(6, k, 10)).astype(np.float32)
    parity = outputs.sum(axis=1, keepdims=True)  # a perfect parity model
    results = np.concatenate([outputs, parity], axis=1)
    for missing in range(k + 1):
        available = np.ones(k + 1, bool)
        available[missing] = False
        garbage = results.copy()
        garbage[:, missing] = 1e6  # whatever an absent worker's row holds is ignored
        np.testing.assert_allclose(code.decode(garbage, available), outputs, atol=1e-4)


def test_parm_tolerates_exactly_one_missing_result():
    code = ParMAddition(3)
    assert code.decodable(np.array([1, 1, 1, 0], bool))
    assert code.decodable(np.array([0, 1, 1, 1], bool))
    assert not code.decodable(np.array([0, 0, 1, 1], bool))
    with pytest.raises(ValueError, match="cannot decode"):
        code.decode(np.zeros((1, 4, 10)), np.array([0, 0, 1, 1], bool))


def test_concatenation_k2_puts_half_width_images_side_by_side():
    queries = rng.random((2, 2, 3, 8, 8), dtype=np.float32)
    coded = ParMConcatenation(2).encode(queries)[:, 0]
    assert coded.shape == (2, 3, 8, 8)
    left = (queries[:, 0, :, :, 0::2] + queries[:, 0, :, :, 1::2]) / 2
    right = (queries[:, 1, :, :, 0::2] + queries[:, 1, :, :, 1::2]) / 2
    np.testing.assert_allclose(coded[..., :4], left, rtol=1e-6)
    np.testing.assert_allclose(coded[..., 4:], right, rtol=1e-6)


def test_concatenation_k4_fills_quadrants_and_keeps_channels_apart():
    queries = np.zeros((1, 4, 3, 4, 4), np.float32)
    for i in range(4):
        for channel in range(3):
            queries[0, i, channel] = 10 * i + channel  # constant per image and channel
    coded = ParMConcatenation(4).encode(queries)[0, 0]
    for i, (rows, cols) in enumerate([(slice(0, 2), slice(0, 2)), (slice(0, 2), slice(2, 4)),
                                      (slice(2, 4), slice(0, 2)), (slice(2, 4), slice(2, 4))]):
        for channel in range(3):
            np.testing.assert_array_equal(coded[channel, rows, cols], 10 * i + channel)


def test_bad_shapes_and_specs_are_named():
    with pytest.raises(ValueError, match=r"queries must be \[groups, 2"):
        ParMAddition(2).encode(np.zeros((1, 3, 4)))
    with pytest.raises(ValueError, match="k = 2 or 4"):
        ParMConcatenation(3)
    with pytest.raises(ValueError, match="unknown code 'nope'"):
        make_code(CodeSpec("nope", 2))
    with pytest.raises(ValueError, match=r"results must be \[groups, 3"):
        ParMAddition(2).decode(np.zeros((1, 2, 10)), np.ones(3, bool))
