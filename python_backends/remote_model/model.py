"""A local stand-in for a model on another Triton server (parameters ``url``, ``model``,
``timeout_ms``): every request is forwarded over gRPC; a remote failure is this request's error."""

import json

import triton_python_backend_utils as pb_utils

from coded_serving.runtime.remote import RemoteModel


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config["parameters"].items()}
        self.inputs = [tensor["name"] for tensor in config["input"]]
        self.outputs = [tensor["name"] for tensor in config["output"]]
        self.remote = RemoteModel(parameters["url"], parameters["model"], float(parameters["timeout_ms"]) / 1000)

    def execute(self, requests):
        responses = []
        for request in requests:
            inputs = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs}
            try:
                outputs = self.remote.infer(inputs, self.outputs)
            except Exception as error:  # any remote failure is this member's error, reported to the scheduler
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"{self.remote.model}: {error}")))
                continue
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(n, v) for n, v in outputs.items()]))
        return responses

    def finalize(self):
        self.remote.close()
