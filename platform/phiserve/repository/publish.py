"""Publishing to the model repository (export time): signature, encryption, layout, card.

The ONNX graph is read here, once, to derive the signature that the manifest records; the server
reads the manifest and never parses ONNX itself.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import onnx

from phiserve.crypto.base import KeyProvider
from phiserve.crypto.envelope import seal
from phiserve.errors import ModelLoadError, NotFound
from phiserve.export import ExportedModel, complete_card
from phiserve.repository.card import render_markdown
from phiserve.repository.manifest import (
    CARD_FILE,
    MANIFEST_FILE,
    ONNX_TO_V2,
    Manifest,
    TensorSpec,
    artifact_aad,
    key_context,
)
from phiserve.repository.store import ModelRepository, write_file

_NAME_OK = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


def validate_model_name(name: str) -> str:
    """Model names are path segments and metric labels: keep them short and plain."""
    if not _NAME_OK.match(name):
        raise NotFound(f"invalid model name {name!r}: use lowercase letters, digits, '.', '_', '-'")
    return name


def signature_of(onnx_bytes: bytes) -> tuple[list[TensorSpec], list[TensorSpec], bool]:
    """Inputs, outputs and whether every input has a variable leading (batch) axis."""
    graph = onnx.load_model_from_string(onnx_bytes).graph
    initializers = {init.name for init in graph.initializer}

    def specs(values: list) -> list[TensorSpec]:
        out = []
        for value in values:
            tensor = value.type.tensor_type
            if tensor.elem_type not in ONNX_TO_V2:
                raise ModelLoadError(f"tensor {value.name!r} has unsupported element type")
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
            out.append(
                TensorSpec(name=value.name, datatype=ONNX_TO_V2[tensor.elem_type], shape=dims)
            )
        return out

    inputs = specs([v for v in graph.input if v.name not in initializers])
    outputs = specs(list(graph.output))
    batchable = all(spec.shape and spec.shape[0] == -1 for spec in inputs + outputs)
    return inputs, outputs, batchable


def publish(
    repository: ModelRepository,
    exported: ExportedModel,
    provider: KeyProvider,
    version: int | None = None,
) -> Manifest:
    """Encrypt ``exported`` and publish it as ``version`` (default: latest + 1)."""
    name = validate_model_name(exported.name)
    if not exported.parity.get("passed"):
        raise ModelLoadError(f"model {name!r}: export parity check did not pass; not published")
    existing = repository.versions(name)
    version = version or (existing[-1] + 1 if existing else 1)
    if version in existing:
        raise ModelLoadError(f"model {name!r} version {version} already exists")
    inputs, outputs, batchable = signature_of(exported.onnx_bytes)
    digest = hashlib.sha256(exported.onnx_bytes).hexdigest()
    header, ciphertext, data_key = seal(
        provider,
        exported.onnx_bytes,
        artifact_aad(name, version, digest),
        key_context(name, version),
    )
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    card = complete_card(exported.card, version=version, sha256=digest, date=created)
    manifest = Manifest(
        name=name,
        version=version,
        inputs=inputs,
        outputs=outputs,
        max_batch_size=int(exported.serving.get("max_batch_size", 64)) if batchable else 0,
        sha256=digest,
        size_bytes=len(exported.onnx_bytes),
        created=created,
        parity=exported.parity,
        metrics=exported.metrics,
        card=card,
        serving=exported.serving,
        extensions=exported.extensions,
        encryption=header.to_json(),
    ).signed(data_key)

    # Build the version in a sibling temp folder and rename it in: readers never see half.
    root = repository.root
    (root / name).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=root / name))
    try:
        write_file(staging / manifest.artifact, ciphertext)
        write_file(staging / MANIFEST_FILE, manifest.to_json().encode())
        write_file(staging / CARD_FILE, render_markdown(manifest.card).encode())
        os.replace(staging, root / name / str(version))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest
