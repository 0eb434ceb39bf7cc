"""A small onnxruntime runtime for Seldon MLServer: what a user writes to serve an ONNX file.

Imported by MLServer from ``.venv-mlserver`` (``implementation`` in model-settings.json), never
from phiserve's venv. The model file comes from ``parameters.uri``; decoding and encoding use
MLServer's own NumpyCodec, as its documentation shows for custom runtimes.
"""

from __future__ import annotations

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri

from benchmarks.ort_options import session_options


class OnnxRuntimeModel(MLModel):
    """Runs one ONNX model with onnxruntime on CPU."""

    async def load(self) -> bool:
        """Create the session from the model file named by ``parameters.uri``."""
        uri = await get_model_uri(self._settings)
        self._session = ort.InferenceSession(
            uri, sess_options=session_options(), providers=["CPUExecutionProvider"]
        )
        self._output_names = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        """Decode every input with NumpyCodec, run, encode every output."""
        feeds = {inp.name: NumpyCodec.decode_input(inp) for inp in payload.inputs}
        results = self._session.run(self._output_names, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[
                NumpyCodec.encode_output(name, array)
                for name, array in zip(self._output_names, results, strict=True)
            ],
        )
