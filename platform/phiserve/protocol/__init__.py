"""The Open Inference Protocol (KServe V2 / Triton HTTP): types, codecs and the data plane."""
