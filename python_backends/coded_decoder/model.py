"""Standalone decoder: ``results`` [num_workers, *out] and ``available`` [num_workers] per item
-> ``estimates`` [k, *out]."""

import json

import triton_python_backend_utils as pb_utils

from coded_serving.codec_models import decode_batch, parse_code


class TritonPythonModel:
    def initialize(self, args):
        self.code = parse_code(json.loads(args["model_config"]))

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
