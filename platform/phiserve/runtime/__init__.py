"""Model runtimes: onnxruntime sessions, execution providers and dynamic batching."""
