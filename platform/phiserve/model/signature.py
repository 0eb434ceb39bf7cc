"""Requests against a model's signature: input checks and output selection (V2 semantics)."""

from __future__ import annotations

import numpy as np

from phiserve.errors import BadRequest
from phiserve.model.types import InferenceRequest, ResponseOutput
from phiserve.repository.manifest import Manifest, TensorSpec


def check_inputs(manifest: Manifest, request: InferenceRequest) -> dict[str, np.ndarray]:
    """The request's tensors by name, once names, datatypes, ranks, fixed dims and the batch
    size match the signature; a :class:`BadRequest` naming the first mismatch otherwise."""
    m = manifest
    specs: dict[str, TensorSpec] = {spec.name: spec for spec in m.inputs}
    given = {inp.name for inp in request.inputs}
    if missing := sorted(specs.keys() - given):
        raise BadRequest(f"model {m.name!r}: missing inputs {missing}")
    if unknown := sorted(given - specs.keys()):
        raise BadRequest(f"model {m.name!r}: unknown inputs {[u[:64] for u in unknown[:5]]}")
    feeds: dict[str, np.ndarray] = {}
    for inp in request.inputs:
        spec = specs[inp.name]
        if inp.datatype != spec.datatype:
            raise BadRequest(
                f"input {inp.name!r}: datatype {inp.datatype} does not match "
                f"the model's {spec.datatype}"
            )
        if len(inp.shape) != len(spec.shape) or any(
            want not in (-1, got) for want, got in zip(spec.shape, inp.shape, strict=True)
        ):
            raise BadRequest(
                f"input {inp.name!r}: shape {inp.shape} does not match the model's {spec.shape}"
            )
        feeds[inp.name] = inp.array
    if m.max_batch_size:
        # A batch larger than max_batch_size still runs, alone, as Triton's batcher would not.
        rows = {inp.shape[0] for inp in request.inputs}
        if len(rows) > 1:
            raise BadRequest(f"model {m.name!r}: inputs disagree on the batch size")
        if 0 in rows:
            raise BadRequest(f"model {m.name!r}: empty batch")
    return feeds


def select_outputs(
    manifest: Manifest, request: InferenceRequest, outputs: dict[str, np.ndarray]
) -> list[ResponseOutput]:
    """The outputs the request asked for (all when it named none), each binary or JSON."""
    if request.outputs is None:
        return [
            ResponseOutput(name, value, request.binary_output) for name, value in outputs.items()
        ]
    selected = []
    for wanted in request.outputs:
        if wanted.name not in outputs:
            raise BadRequest(f"model {manifest.name!r} has no output {wanted.name[:64]!r}")
        selected.append(ResponseOutput(wanted.name, outputs[wanted.name], wanted.binary))
    return selected
