"""V2 tensor datatypes and their numpy equivalents."""

from __future__ import annotations

import numpy as np

# Little-endian on the wire, as the binary tensor data extension specifies.
V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),
}

NUMPY_TO_V2: dict[np.dtype, str] = {dt: name for name, dt in V2_TO_NUMPY.items()}
# onnxruntime returns native-order arrays; map those too (equal to little-endian on x86/ARM).
NUMPY_TO_V2.update({dt.newbyteorder("="): name for dt, name in list(NUMPY_TO_V2.items())})


def v2_datatype(array: np.ndarray) -> str:
    """The V2 datatype name of a numpy array (strings and bytes are BYTES)."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    return NUMPY_TO_V2[array.dtype]
