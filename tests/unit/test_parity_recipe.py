"""The distilled parity recipe's loss and augmentation (coded_serving/training/parity_recipe.py)."""

import numpy as np
import torch

from coded_serving.training.parity_recipe import parity_loss, shifted


def test_an_exact_parity_has_zero_loss_and_the_centred_loss_ignores_a_common_shift() -> None:
    members = torch.randn(4, 3, 10)
    exact = members.sum(dim=1)
    assert parity_loss(exact, members, 1.0, 2.0).item() < 1e-6
    shifted_output = exact + torch.randn(4, 1)  # the same shift on every class: no decoded softmax changes
    assert parity_loss(shifted_output, members, 1.0, 1.0).item() > 0.1
    assert parity_loss(shifted_output, members, 1.0, 1.0, centred=True).item() < 1e-5


def test_shifted_moves_whole_images_within_the_bound() -> None:
    images = np.zeros((50, 1, 28, 28), dtype=np.float32)
    images[:, :, 14, 14] = 1.0
    moved = shifted(images, np.random.default_rng(0), 2)
    rows, cols = np.nonzero(moved[:, 0].sum(axis=0))
    assert moved.sum() == 50 and rows.min() >= 12 and rows.max() <= 16 and cols.min() >= 12 and cols.max() <= 16
    assert shifted(images, np.random.default_rng(0), 0) is images


def test_res_parity_maps_images_to_logits_and_exports_to_onnx(tmp_path) -> None:
    from coded_serving.benchmarks.compute import onnx_macs
    from coded_serving.training.onnx_export import export_onnx
    from coded_serving.training.parity_recipe import ResParity

    model = ResParity((8, 16, 32), 32, blocks=2).eval()
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    export_onnx(model, tmp_path / "res.onnx")  # raises if onnxruntime and torch disagree
    assert onnx_macs(tmp_path / "res.onnx") > 0
