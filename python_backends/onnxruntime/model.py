"""A Python-based Triton backend named ``onnxruntime``: serves ``<version>/model.onnx``.

The tritonserver in the nvidia-pytriton wheel has no ONNX Runtime backend; this one makes
``backend: "onnxruntime"`` work there, so the same repository runs on the NGC image's native
backend. It also honours the project's fault-injection parameters (coded_serving.runtime.faults).
"""

import json
import os
import time

import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils

from coded_serving.runtime.faults import FaultInjection, FaultInjector


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        filename = config.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_names = [tensor["name"] for tensor in config["output"]]
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        # a multi-instance model may have only some instances misbehave
        self.faults = FaultInjector(FaultInjection.from_parameters(parameters).for_instance(args["model_instance_name"]))

    def execute(self, requests):
        delay = self.faults.next_delay_s()
        if delay:
            time.sleep(delay)
        if self.faults.next_error():
            # one error object per response: the Python backend releases each response's error
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError("injected failure")) for _ in requests]
        inputs = [[pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests] for name in self.input_names]
        sizes = [len(batch) for batch in inputs[0]]
        feed = {name: np.concatenate(batches) for name, batches in zip(self.input_names, inputs)}
        outputs = self.session.run(self.output_names, feed)
        splits = np.cumsum(sizes)[:-1]
        per_request = zip(*(np.split(output, splits) for output in outputs))
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor(name, value) for name, value in zip(self.output_names, values)])
            for values in per_request
        ]
