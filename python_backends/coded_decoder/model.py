"""Standalone decoder: ``results`` [num_workers, *out] and ``available`` [num_workers] per item
-> ``estimates`` [k, *answer] (decoded, then the code's postprocess: Coded-InvNet's head)."""

import json
import os

import triton_python_backend_utils as pb_utils

from coded_serving.runtime.codec import decode_batch, parse_code


class TritonPythonModel:
    def initialize(self, args):
        resources = os.path.join(args["model_repository"], args["model_version"])
        self.code = parse_code(json.loads(args["model_config"]), resources)

    def execute(self, requests):
        responses = []
        for request in requests:
            results = pb_utils.get_input_tensor_by_name(request, "results").as_numpy()
            available = pb_utils.get_input_tensor_by_name(request, "available").as_numpy()
            estimates, error = decode_batch(self.code, results, available)
            if error:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(error)))
            else:
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("estimates", estimates)]))
        return responses
