"""Forwards each request to the model named by the ``target`` parameter, over one synchronous BLS call.

It holds no logic: it measures the floor that any coordinator written as a Triton Python
model pays before doing anything (one Python-backend hop plus one BLS call), which the
overhead benchmark sets beside the coded ensemble's cost.
"""

import json

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.target = config["parameters"]["target"]["string_value"]
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_names = [tensor["name"] for tensor in config["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            forwarded = pb_utils.InferenceRequest(
                model_name=self.target,
                requested_output_names=self.output_names,
                inputs=[pb_utils.get_input_tensor_by_name(request, name) for name in self.input_names],
            ).exec()
            if forwarded.has_error():
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(forwarded.error().message())))
            else:
                responses.append(pb_utils.InferenceResponse(forwarded.output_tensors()))
        return responses
