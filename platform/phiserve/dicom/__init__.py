"""DICOM in for imaging models: decode, check and preprocess radiographs as the export declared.

``spec`` (the manifest's ``extensions["dicom"]`` block and its hook), ``instance`` (reading an
instance with pydicom, refusing before decoding what cannot be decoded safely), ``image`` (the
one preprocessing pipeline export and server share), ``stow`` (STOW-RS multipart bodies),
``http`` (the route and its handler), ``observation`` (the FHIR answer), ``metrics``.
"""

from phiserve.dicom.image import preprocess
from phiserve.dicom.instance import ACCEPTED_SYNTAXES, read_instance
from phiserve.dicom.spec import DicomHook, DicomPreprocessing, dicom_hook

__all__ = [
    "ACCEPTED_SYNTAXES",
    "DicomHook",
    "DicomPreprocessing",
    "dicom_hook",
    "preprocess",
    "read_instance",
]
