"""The encrypted model repository: publish, load, verify, rotate, and every refusal."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import onnx
import pytest

from phiserve.config import Settings
from phiserve.crypto import key_provider_from_settings
from phiserve.crypto.local import LocalKeyProvider
from phiserve.errors import KeyProviderError, ModelLoadError
from phiserve.export import ExportedModel
from phiserve.repository.manifest import ARTIFACT_FILE, MANIFEST_FILE
from phiserve.repository.publish import publish
from phiserve.repository.store import ModelRepository
from tests.server import run_cli
from tests.toy_models import exported_doubler

MODEL = "breast-cancer"


def _settings(home: Path) -> Settings:
    return Settings(home=home)


def _repo(home: Path) -> tuple[ModelRepository, LocalKeyProvider]:
    settings = _settings(home)
    return ModelRepository(settings.repository_dir), key_provider_from_settings(settings)


def _version_dir(home: Path, version: int = 1, model: str = MODEL) -> Path:
    return _settings(home).repository_dir / model / str(version)


def test_built_repository_loads_and_matches_digest(home: Path) -> None:
    repo, provider = _repo(home)
    assert repo.models() == ["breast-cancer", "chest-xray", "deterioration"]
    artifact = repo.load(MODEL, 1, provider)
    assert hashlib.sha256(artifact.onnx_bytes).hexdigest() == artifact.manifest.sha256
    model = onnx.load_model_from_string(artifact.onnx_bytes)
    assert [i.name for i in model.graph.input] == ["input"]
    assert artifact.manifest.inputs[0].shape == [-1, 30]
    assert artifact.manifest.parity["passed"] is True
    assert artifact.manifest.card["artifact"]["sha256"] == artifact.manifest.sha256


def test_no_plaintext_onnx_anywhere_after_build(built_home: Path) -> None:
    repo, provider = _repo(built_home)
    plaintexts = [repo.load(name, v, provider).onnx_bytes for name, v in repo.entries()]
    files = [p for p in built_home.rglob("*") if p.is_file()]
    assert any(p.name == ARTIFACT_FILE for p in files)
    for path in files:
        data = path.read_bytes()
        for plain in plaintexts:
            # Any 256-byte window of the model (here: its start and middle) would betray it.
            mid = len(plain) // 2
            assert plain[:256] not in data and plain[mid : mid + 256] not in data, path
        with pytest.raises(Exception):  # noqa: B017, PT011 - any parse or check failure will do
            onnx.checker.check_model(onnx.load_model_from_string(data))


def test_wrong_kek_is_refused_naming_model_version_and_cause(home: Path) -> None:
    repo, _ = _repo(home)
    stranger = LocalKeyProvider(home / "other-kek.json", create=True)
    with pytest.raises(
        KeyProviderError, match=r"model 'breast-cancer' version 1: KEK .* is not in key file"
    ):
        repo.load(MODEL, 1, stranger)


def test_same_key_id_with_other_key_material_fails_authentication(home: Path) -> None:
    kek_file = _settings(home).kek_file
    data = json.loads(kek_file.read_text())
    data["keys"][data["current"]] = "A" * 43 + "="  # 32 other bytes under the same id
    kek_file.write_text(json.dumps(data))
    repo, provider = _repo(home)
    with pytest.raises(
        ModelLoadError, match=r"model 'breast-cancer' version 1 refused: data key does not unwrap"
    ):
        repo.load(MODEL, 1, provider)


def test_flipped_artifact_byte_is_detected(home: Path) -> None:
    artifact = _version_dir(home) / ARTIFACT_FILE
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(bytes(data))
    repo, provider = _repo(home)
    with pytest.raises(
        ModelLoadError, match=r"version 1 refused: ciphertext failed authentication"
    ):
        repo.load(MODEL, 1, provider)


def test_artifacts_swapped_between_versions_are_detected(home: Path) -> None:
    repo, provider = _repo(home)
    v2 = publish(repo, _exported(repo, provider), provider)
    assert v2.version == 2
    a, b = _version_dir(home, 1) / ARTIFACT_FILE, _version_dir(home, 2) / ARTIFACT_FILE
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)
    b.write_bytes(a_bytes)
    for version in (1, 2):
        with pytest.raises(ModelLoadError, match=f"version {version} refused: ciphertext failed"):
            repo.load(MODEL, version, provider)


def test_whole_version_folders_swapped_are_detected(home: Path) -> None:
    repo, provider = _repo(home)
    publish(repo, _exported(repo, provider), provider)
    one, two = _version_dir(home, 1), _version_dir(home, 2)
    os.rename(one, one.with_name("tmp"))
    os.rename(two, one)
    os.rename(one.with_name("tmp"), two)
    with pytest.raises(ModelLoadError, match="manifest names 'breast-cancer' version 2"):
        repo.load(MODEL, 1, provider)


def test_edited_manifest_card_is_detected(home: Path) -> None:
    path = _version_dir(home) / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest["card"]["intended_use"] = "anything at all"
    path.write_text(json.dumps(manifest))
    repo, provider = _repo(home)
    with pytest.raises(ModelLoadError, match="manifest authentication failed"):
        repo.load(MODEL, 1, provider)


def test_missing_key_file_names_the_fix(home: Path) -> None:
    _settings(home).kek_file.unlink()
    with pytest.raises(KeyProviderError, match=r"not found; run 'phiserve keys init'"):
        _repo(home)


def test_key_file_readable_by_others_is_refused(home: Path) -> None:
    kek = _settings(home).kek_file
    kek.chmod(0o644)
    with pytest.raises(KeyProviderError, match="readable by group or others"):
        _repo(home)


def test_parity_failure_is_never_published(home: Path) -> None:
    repo, provider = _repo(home)
    good = _exported(repo, provider)
    bad = ExportedModel(good.name, good.onnx_bytes, {**good.parity, "passed": False}, {}, good.card)
    with pytest.raises(ModelLoadError, match="parity check did not pass"):
        publish(repo, bad, provider)
    assert repo.versions(MODEL) == [1]


def test_cli_verify_reports_tampering_without_traceback(home: Path) -> None:
    ok = run_cli(home, "models", "verify")
    assert "3 of 3 versions verified" in ok.stdout
    artifact = _version_dir(home) / ARTIFACT_FILE
    artifact.write_bytes(artifact.read_bytes()[:-1])
    bad = run_cli(home, "models", "verify", check=False)
    assert bad.returncode == 1
    assert "FAIL model 'breast-cancer' version 1 refused" in bad.stdout
    assert "Traceback" not in bad.stdout + bad.stderr


def test_cli_missing_key_is_one_line_error(home: Path) -> None:
    _settings(home).kek_file.unlink()
    out = run_cli(home, "models", "verify", check=False)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("phiserve: error: key file")
    assert "Traceback" not in out.stderr


def test_rotation_rewraps_without_touching_payloads(home: Path) -> None:
    settings = _settings(home)
    before_kek = json.loads(settings.kek_file.read_text())["current"]
    artifacts = sorted(settings.repository_dir.rglob(ARTIFACT_FILE))
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in artifacts]
    out = run_cli(home, "keys", "rotate")
    assert "re-wrapped 3 model versions" in out.stdout
    after = json.loads(settings.kek_file.read_text())
    assert after["current"] != before_kek and list(after["keys"]) == [after["current"]]
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in artifacts] == digests
    assert "3 of 3 versions verified" in run_cli(home, "models", "verify").stdout
    manifest = json.loads((_version_dir(home) / MANIFEST_FILE).read_text())
    assert manifest["encryption"]["key_id"] == after["current"]


def _exported(repo: ModelRepository, provider: LocalKeyProvider) -> ExportedModel:
    """The published v1 as an ExportedModel again (deterministic exports give the same bytes)."""
    artifact = repo.load(MODEL, 1, provider)
    m = artifact.manifest
    return ExportedModel(m.name, artifact.onnx_bytes, m.parity, m.metrics, m.card, m.serving)


def test_extensions_are_authenticated_and_absent_ones_keep_old_macs(home: Path) -> None:
    repo, provider = _repo(home)
    exported = dataclasses.replace(
        exported_doubler("ext"), extensions={"deferral": {"max_missing": 2}}
    )
    manifest = publish(repo, exported, provider)
    assert repo.load("ext", 1, provider).manifest.extensions == {"deferral": {"max_missing": 2}}
    path = _version_dir(home, 1, "ext") / MANIFEST_FILE
    doc = json.loads(path.read_text())
    doc["extensions"]["deferral"]["max_missing"] = 99
    path.write_text(json.dumps(doc))
    with pytest.raises(ModelLoadError, match="manifest authentication failed"):
        repo.load("ext", 1, provider)
    # A manifest written before extensions existed has no such key: its MAC still verifies.
    assert "extensions" not in json.loads(
        manifest.model_copy(update={"extensions": {}}).canonical_bytes()
    )
