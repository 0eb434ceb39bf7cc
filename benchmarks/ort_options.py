"""onnxruntime session options shared by the floor and the MLServer runtime.

They match what :class:`phiserve.runtime.onnx.OnnxSession` sets, so the three servers differ in their
serving stacks, not in how onnxruntime runs the model. Imported from both virtual environments:
depends on onnxruntime only.
"""

from __future__ import annotations

import onnxruntime as ort


def session_options() -> ort.SessionOptions:
    """Full graph optimisation, default intra-op threads, no spinning."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 0
    # Spinning worker threads would steal the cores the event loop needs between requests.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options
