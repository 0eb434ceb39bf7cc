"""phiserve: encrypted ONNX models served by BentoML over the Open Inference Protocol."""

__version__ = "0.1.0"
