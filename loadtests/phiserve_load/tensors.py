"""Valid random requests for a model signature, in both V2 encodings.

JSON: ``{"inputs": [{"name", "shape", "datatype", "data": [...]}]}`` with flat row-major data.
Binary (the binary tensor data extension, what ``tritonclient.http`` sends by default): a JSON
header whose inputs carry ``parameters.binary_data_size``, then the raw little-endian tensor
bytes; outputs are asked for as binary too, and ``Inference-Header-Content-Length`` says where
the header ends.

Bodies are built once, before the load starts, and reused: generating 50,176 floats per chest
X-ray request during the run would measure the load generator, not the server. Values are
synthetic (uniform noise): a load test never sends patient data.
"""

from __future__ import annotations

import json
import random
import struct
from dataclasses import dataclass, field

from phiserve_load.discovery import ModelSignature, TensorSpec

# V2 datatype -> struct format character (little-endian via "<"). BYTES is length-prefixed.
STRUCT_CODES: dict[str, str] = {
    "BOOL": "?",
    "UINT8": "B",
    "UINT16": "H",
    "UINT32": "I",
    "UINT64": "Q",
    "INT8": "b",
    "INT16": "h",
    "INT32": "i",
    "INT64": "q",
    "FP16": "e",
    "FP32": "f",
    "FP64": "d",
}
SUPPORTED = (*STRUCT_CODES, "BYTES")
# Past this size a body is built once per target and batch instead of --payload-variants times.
MAX_VARIANT_BYTES = 8 * 1024 * 1024


class UnsupportedSignature(ValueError):
    """A signature this generator cannot fill (unknown datatype or impossible shape)."""


@dataclass(frozen=True)
class Target:
    """One (model version, encoding) pair that requests are sent to."""

    signature: ModelSignature
    encoding: str  # "json" or "binary"

    @property
    def model(self) -> str:
        """Model name."""
        return self.signature.name

    @property
    def version(self) -> str:
        """Version string, "" for the unversioned route."""
        return self.signature.version

    @property
    def path(self) -> str:
        """The infer URL path."""
        base = f"/v2/models/{self.model}"
        return base + (f"/versions/{self.version}/infer" if self.version else "/infer")

    @property
    def route(self) -> str:
        """The route template, as stats name it."""
        if self.version:
            return "/v2/models/{model}/versions/{version}/infer"
        return "/v2/models/{model}/infer"

    @property
    def key(self) -> str:
        """``model@version:encoding`` (version ``default`` for the unversioned route)."""
        return f"{self.signature.label}:{self.encoding}"

    def name(self, batch: int) -> str:
        """Request name for locust stats: route template plus what varies."""
        version = f"v{self.version}" if self.version else "default"
        suffix = f" b{batch}" if batch != 1 else ""
        return f"POST {self.route} [{self.model} {version} {self.encoding}{suffix}]"


@dataclass(frozen=True)
class Payload:
    """One ready-to-send request."""

    target: Target
    batch: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """Request name for locust stats."""
        return self.target.name(self.batch)


def concrete_shape(spec: TensorSpec, batch: int, dim_size: int) -> tuple[list[int], int]:
    """Shape with the batch axis and other variable dims filled; returns (shape, rows)."""
    if not spec.shape:
        return [], 1
    shape = list(spec.shape)
    rows = batch
    if shape[0] == -1:
        shape[0] = batch
    else:
        rows = shape[0]  # a fixed leading dim: the model does not batch on it
    shape[1:] = [dim_size if d == -1 else d for d in shape[1:]]
    if any(d < 0 for d in shape):
        raise UnsupportedSignature(f"input {spec.name}: cannot fill shape {list(spec.shape)}")
    return shape, rows


def _count(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def random_values(datatype: str, n: int, rng: random.Random) -> list[object]:
    """``n`` random values valid for ``datatype`` (floats in [0, 1), small non-negative ints)."""
    if datatype in ("FP16", "FP32", "FP64"):
        # Five decimals: a realistic JSON body size, and exact enough for every float type.
        return [round(rng.random(), 5) for _ in range(n)]
    if datatype == "BOOL":
        return [rng.random() < 0.5 for _ in range(n)]
    if datatype == "BYTES":
        return ["".join(rng.choice("abcdefghij") for _ in range(8)) for _ in range(n)]
    if datatype in STRUCT_CODES:
        return [rng.randrange(0, 10) for _ in range(n)]
    raise UnsupportedSignature(f"datatype {datatype} (supported: {', '.join(SUPPORTED)})")


def pack(datatype: str, values: list[object]) -> bytes:
    """Raw little-endian bytes of ``values`` as the binary extension expects."""
    if datatype == "BYTES":
        out = bytearray()
        for v in values:
            raw = v.encode() if isinstance(v, str) else bytes(v)  # type: ignore[arg-type]
            out += struct.pack("<I", len(raw)) + raw
        return bytes(out)
    return struct.pack(f"<{len(values)}{STRUCT_CODES[datatype]}", *values)


def build_payload(target: Target, batch: int, rng: random.Random, *, dim_size: int = 8) -> Payload:
    """A valid random request for ``target`` with ``batch`` rows."""
    sig = target.signature
    tensors = []
    for spec in sig.inputs:
        shape, _ = concrete_shape(spec, batch, dim_size)
        tensors.append((spec, shape, random_values(spec.datatype, _count(shape), rng)))
    if target.encoding == "json":
        doc = {
            "inputs": [
                {"name": s.name, "shape": shape, "datatype": s.datatype, "data": values}
                for s, shape, values in tensors
            ]
        }
        body = json.dumps(doc, separators=(",", ":")).encode()
        return Payload(target, batch, body, {"Content-Type": "application/json"})
    raws = [pack(s.datatype, values) for s, _, values in tensors]
    header = {
        "inputs": [
            {
                "name": s.name,
                "shape": shape,
                "datatype": s.datatype,
                "parameters": {"binary_data_size": len(raw)},
            }
            for (s, shape, _), raw in zip(tensors, raws, strict=True)
        ],
        "outputs": [{"name": o.name, "parameters": {"binary_data": True}} for o in sig.outputs],
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(head)),
    }
    return Payload(target, batch, head + b"".join(raws), headers)


def usable_batches(sig: ModelSignature, batch_sizes: tuple[int, ...]) -> tuple[int, ...]:
    """Batch sizes this model accepts: capped by its max_batch_size, 1 for fixed batch axes."""
    if any(not spec.shape or spec.shape[0] != -1 for spec in sig.inputs):
        return (1,)
    cap = sig.max_batch_size or max(batch_sizes)
    usable = tuple(sorted({min(b, cap) for b in batch_sizes}))
    return usable or (1,)


def build_payloads(
    targets: list[Target],
    batch_sizes: tuple[int, ...],
    *,
    variants: int,
    dim_size: int,
    rng: random.Random,
) -> dict[str, list[Payload]]:
    """Target key -> pre-built payloads (every usable batch size, ``variants`` bodies each)."""
    out: dict[str, list[Payload]] = {}
    for target in targets:
        payloads: list[Payload] = []
        for batch in usable_batches(target.signature, batch_sizes):
            first = build_payload(target, batch, rng, dim_size=dim_size)
            payloads.append(first)
            if len(first.body) <= MAX_VARIANT_BYTES:
                payloads += [
                    build_payload(target, batch, rng, dim_size=dim_size)
                    for _ in range(variants - 1)
                ]
        out[target.key] = payloads
    return out
