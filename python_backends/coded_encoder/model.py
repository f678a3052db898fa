"""Standalone encoder: ``queries`` [k, *in] per item -> ``coded_queries`` [num_coded, *in]."""

import json

import triton_python_backend_utils as pb_utils

from coded_serving.runtime.codec import encode_batch, parse_code


class TritonPythonModel:
    def initialize(self, args):
        self.code = parse_code(json.loads(args["model_config"]))

    def execute(self, requests):
        responses = []
        for request in requests:
            queries = pb_utils.get_input_tensor_by_name(request, "queries").as_numpy()
            coded, error = encode_batch(self.code, queries)
            if error:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(error)))
            else:
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("coded_queries", coded)]))
        return responses
