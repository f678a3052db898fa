"""The installed package serves: a wheel built from this tree, installed without the source checkout
in a throwaway venv, lays out its backends as the Docker image does and serves the shipped repository."""

from __future__ import annotations

import signal
import subprocess
import sys
import sysconfig
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import tritonclient.http as http

from coded_serving.deployment.launcher import DEFAULT_REPOSITORY, PROJECT_ROOT, free_port


def test_wheel_holds_every_subpackage_the_backends_and_the_scheduler_sources(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for part in ("codes", "specs", "runtime", "scheduler", "deployment", "training", "benchmarks"):
        assert f"coded_serving/{part}/__init__.py" in names, part
    for backend in ("onnxruntime", "coded_encoder", "coded_decoder", "remote_model"):
        assert f"coded_serving/python_backends/{backend}/model.py" in names, backend
    assert any(n.startswith("coded_serving/scheduler/") and n.endswith(".cc") for n in names)


def test_installed_wheel_lays_out_backends_and_serves_the_shipped_repository(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # the dependencies come from this venv (read-only, through a path entry); the package from the wheel
    site = Path(subprocess.check_output([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                        text=True).strip())
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True)
    origin = subprocess.check_output([venv / "bin" / "python", "-c", "import coded_serving; print(coded_serving.__file__)"],
                                     cwd=tmp_path, text=True)
    assert str(site) in origin and str(PROJECT_ROOT) not in origin

    laid_out = subprocess.run([venv / "bin" / "coded-serving", "backends", str(tmp_path / "backends")], cwd=tmp_path,
                              capture_output=True, text=True, check=True)
    assert (tmp_path / "backends" / "coded_ensemble" / "libtriton_coded_ensemble.so").is_file(), laid_out.stdout
    assert (tmp_path / "backends" / "coded_decoder" / "model.py").is_file()

    ports = [free_port() for _ in range(3)]
    server = subprocess.Popen(
        [venv / "bin" / "coded-serving", "serve", "--model-repository", str(DEFAULT_REPOSITORY),
         "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        banner = [server.stdout.readline() for _ in range(4)]
        assert f"127.0.0.1:{ports[0]}" in banner[1], banner
        client = http.InferenceServerClient(f"127.0.0.1:{ports[0]}")
        # lone queries: answered by a data member or its copy on the other, so always exactly
        image = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
        answers = {}
        for model in ("lenet5", "lenet5_parm"):
            query = http.InferInput("image", list(image.shape), "FP32")
            query.set_data_from_numpy(image)
            answers[model] = client.infer(model, [query]).as_numpy("logits")
        np.testing.assert_allclose(answers["lenet5_parm"], answers["lenet5"], rtol=1e-5, atol=1e-5)
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/v2/models/lenet5_parm_decoder/ready", timeout=5) as r:
            assert r.status == 200
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
