"""Export and server preprocess real radiographs identically, end to end.

The export script declares its preprocessing and runs :func:`phiserve.dicom.preprocess` with it;
the server runs the same function with the block it reads back from the authenticated
manifest. These tests show that block equals the export's declaration, and that the logits the
running server answers for real CR files equal onnxruntime's on the export's own tensors.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import httpx
import numpy as np
import pytest

from phiserve.config import Settings
from phiserve.crypto import key_provider_from_settings
from phiserve.dicom import dicom_hook, preprocess
from phiserve.export import load_export, run_onnx
from phiserve.repository.store import ModelRepository
from tests.conftest import REPO_ROOT
from tests.dicom import instances
from tests.server import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def export_module() -> ModuleType:
    """models/chest-xray/export.py, imported as the build imports it."""
    load_export(REPO_ROOT / "models" / "chest-xray" / "export.py")
    return sys.modules["phiserve_models.chest_xray"]


def _published(home: Path) -> tuple:
    settings = Settings(home=home)
    provider = key_provider_from_settings(settings)
    return ModelRepository(settings.repository_dir).load("chest-xray", 1, provider)


def test_the_manifest_carries_the_exports_preprocessing(
    export_module: ModuleType, built_home: Path
) -> None:
    manifest = _published(built_home).manifest
    hook = dicom_hook(manifest)
    assert hook is not None
    assert hook.spec == export_module.PREPROCESSING
    for name in instances.CR_FILES:
        ds = instances.read(name)
        np.testing.assert_array_equal(preprocess(ds, hook.spec), export_module.preprocess(ds))


def test_server_logits_equal_onnxruntime_on_the_exports_tensors(
    export_module: ModuleType, server: ServerProcess
) -> None:
    artifact = _published(server.home)
    names = ["RG3_UNCR.dcm", "RG3_J2KR.dcm", "RG1_J2KI.dcm", "RG1_UNCR.dcm"]
    body = instances.multipart([("application/dicom", instances.raw(n)) for n in names])
    response = httpx.post(
        f"{server.url}/v2/models/chest-xray/dicom",
        content=body,
        headers={**server.auth, "content-type": instances.stow_content_type()},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    served = np.array([r["outputs"][0]["data"] for r in response.json()["results"]])
    tensors = np.concatenate([export_module.preprocess(instances.read(n)) for n in names])
    expected = run_onnx(artifact.onnx_bytes, {"image": tensors})["logits"]
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)
    # The files differ, so equal logits are not a constant's.
    assert np.abs(served[0] - served[2]).max() > 1e-3
