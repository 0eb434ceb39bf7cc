"""The manifest of one model version: signature, provenance, card and encryption header.

The manifest is authenticated with an HMAC under a key derived from the artifact's data key, so
only a holder of the KEK can produce or check it: an edited card, signature or digest is detected
just like an edited artifact.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any, Final, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError

from phiserve.crypto.envelope import derive_key
from phiserve.errors import ModelLoadError

_Block = TypeVar("_Block", bound=BaseModel)

MANIFEST_FILE = "manifest.json"
ARTIFACT_FILE = "model.onnx.enc"
CARD_FILE = "MODEL_CARD.md"
FORMAT_VERSION: Final = 1

# V2 datatype names for ONNX tensor element types (onnx.TensorProto.DataType values).
ONNX_TO_V2: dict[int, str] = {
    1: "FP32",
    2: "UINT8",
    3: "INT8",
    4: "UINT16",
    5: "INT16",
    6: "INT32",
    7: "INT64",
    8: "BYTES",
    9: "BOOL",
    10: "FP16",
    11: "FP64",
    12: "UINT32",
    13: "UINT64",
}


class TensorSpec(BaseModel):
    """One input or output of the model signature; -1 marks a variable dimension."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    datatype: str
    shape: list[int]


class Manifest(BaseModel):
    """``manifest.json`` of one version (see DESIGN.md, Model repository)."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    format: Literal[1] = FORMAT_VERSION
    name: str
    version: PositiveInt
    platform: Literal["onnxruntime_onnx"] = "onnxruntime_onnx"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    # 0 when the model has no batch axis; otherwise the largest batch the server may form.
    max_batch_size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: PositiveInt
    created: str
    artifact: str = ARTIFACT_FILE
    parity: dict[str, Any]
    metrics: dict[str, Any]
    card: dict[str, Any]
    serving: dict[str, Any] = Field(default_factory=dict)
    # What the export declares for the concerns around the model, by concern (for instance
    # "fhir" for the FHIR-to-feature mapping, "explanation", "deferral", "dicom", "monitoring").
    # Each concern validates its own block when it attaches to the model; all are authenticated.
    extensions: dict[str, dict[str, Any]] = Field(default_factory=dict)
    encryption: dict[str, str]
    mac: str = ""

    def extension(self, name: str, kind: type[_Block]) -> _Block | None:
        """Extension block ``name`` validated as ``kind``, or ``None`` when there is none.

        A block that does not validate fails the version's load with a cause naming the model,
        the version and the first bad field (never its value).
        """
        block = self.extensions.get(name)
        if block is None:
            return None
        try:
            return kind.model_validate(block)
        except ValidationError as exc:
            err = exc.errors(include_input=False, include_url=False)[0]
            path = "".join(f".{p}" for p in err["loc"])
            raise ModelLoadError(
                f"model {self.name!r} version {self.version}: extensions.{name}{path}: {err['msg']}"
            ) from None

    def canonical_bytes(self) -> bytes:
        """The bytes the MAC covers: every field but ``mac``, in a canonical JSON form.

        An empty ``extensions`` is left out, so manifests published before it existed verify.
        """
        data = self.model_dump(mode="json", exclude={"mac"})
        if not data["extensions"]:
            del data["extensions"]
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    def signed(self, data_key: bytes) -> Manifest:
        """A copy carrying the MAC under ``data_key``."""
        return self.model_copy(update={"mac": self._mac(data_key)})

    def mac_ok(self, data_key: bytes) -> bool:
        """Whether ``mac`` authenticates this manifest under ``data_key``."""
        return hmac.compare_digest(self.mac, self._mac(data_key))

    def _mac(self, data_key: bytes) -> str:
        return hmac.new(
            derive_key(data_key, "manifest"), self.canonical_bytes(), hashlib.sha256
        ).hexdigest()

    def to_json(self) -> str:
        """Pretty JSON for the file on disk."""
        return self.model_dump_json(indent=2) + "\n"


def key_context(name: str, version: int) -> dict[str, str]:
    """Encryption context of a model's data key: a key wrapped for one version fails for another."""
    return {"purpose": "model", "model": name, "version": str(version)}


def artifact_aad(name: str, version: int, sha256: str) -> bytes:
    """Associated data binding the ciphertext to its model name, version and digest."""
    return f"phiserve-model\x00{name}\x00{version}\x00{sha256}".encode()
