"""FHIR R4 JSON in, validated fhir.resources R4B models out (its R4B models read R4).

Accepted shapes: a Bundle (any type: searchset, collection, transaction...), a Parameters whose
parameters carry resources, a single resource, or a JSON list of these (a CDS Hooks prefetch
value is a resource or a searchset Bundle). Bundles and Parameters may nest (a Bundle inside a
Parameters), two levels deep.

What happens to each entry:

- Patient, Encounter and Observation resources are validated by their R4B model; any error is a
  400 naming the entry and the field (never the value).
- Other resource types are skipped without validation (the mapping does not use them) but must
  be real R4B resource types: ``"resourceType": "Foo"`` is a 400.
- More than ``max_entries`` entries in all: 413 before anything is validated. Validation costs
  about 0.15-0.35 ms per Observation on this project's machines (``benchmarks/fhir_parse.py``),
  so the limit bounds the CPU one request can take.

The envelopes themselves (Bundle, Parameters) are validated by their R4B models too, with the
entries' resources left out: each resource is validated once, by its own model (fhir.resources
8.3 raises a bare ``KeyError`` for an unknown ``resourceType`` inside a whole-Bundle validation).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Final, TypeVar

from fhir.resources.R4B import FHIRAbstractModel, get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.parameters import Parameters
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.resource import Resource
from pydantic import ValidationError

from phiserve.errors import BadRequest, PayloadTooLarge

# The resource types the feature mapping reads, by resourceType.
USED: Final[dict[str, type[Resource]]] = {
    "Patient": Patient,
    "Encounter": Encounter,
    "Observation": Observation,
}
_CONTAINERS: Final = frozenset({"Bundle", "Parameters"})
_MAX_DEPTH: Final = 2
# Field names echoed in error messages only when they look like FHIR element names.
_SAFE_PART = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,40}$")
Found = tuple[str, str, dict[str, Any]]  # (location, resourceType, resource)
_Model = TypeVar("_Model", bound=FHIRAbstractModel)


def parse_resources(doc: Any, *, max_entries: int) -> list[Resource]:
    """The Patient, Encounter and Observation resources in ``doc``, validated, in order.

    Raises :class:`BadRequest` (malformed JSON shapes, unknown resource types, invalid
    resources) or :class:`PayloadTooLarge` (more than ``max_entries`` entries).
    """
    raw: list[Found] = []
    for found in _walk(doc, "request", 0):
        raw.append(found)
        if len(raw) > max_entries:
            raise PayloadTooLarge(f"the request holds more than {max_entries} FHIR resources")
    return [_validate(USED[kind], item, where) for where, kind, item in raw if kind in USED]


def _walk(doc: Any, where: str, depth: int) -> Iterator[Found]:
    """Every resource but containers, which are checked and opened."""
    if isinstance(doc, list):
        if depth > 0:
            raise BadRequest(f"{where}: a JSON list is accepted only at the top level")
        for i, item in enumerate(doc):
            yield from _walk(item, f"{where}[{i}]", depth + 1)
        return
    kind = _resource_type(doc, where)
    if kind in _CONTAINERS:
        if depth > _MAX_DEPTH:
            raise BadRequest(f"{where}: Bundles and Parameters nest more than {_MAX_DEPTH} deep")
        yield from _container(doc, where, depth)
    else:
        yield where, kind, doc


def _resource_type(doc: Any, where: str) -> str:
    if not isinstance(doc, dict):
        raise BadRequest(f"{where}: expected a FHIR resource (a JSON object)")
    kind = doc.get("resourceType")
    if not isinstance(kind, str) or not _SAFE_PART.match(kind):
        raise BadRequest(f"{where}: missing or malformed resourceType")
    if kind not in USED and kind not in _CONTAINERS:
        try:
            get_fhir_model_class(kind)
        except (ValueError, KeyError):
            raise BadRequest(f"{where}: {kind} is not a FHIR R4 resource type") from None
    return kind


def _container(doc: dict[str, Any], where: str, depth: int) -> Iterator[Found]:
    """A Bundle's entries or a Parameters' parameters: the envelope validated without the
    resources, then each resource walked."""
    kind = doc["resourceType"]
    model, field = (Bundle, "entry") if kind == "Bundle" else (Parameters, "parameter")
    items = doc.get(field) or []
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise BadRequest(f"{where}: {kind}.{field} must be a list of objects")
    shell = {**doc, field: [{k: v for k, v in i.items() if k != "resource"} for i in items]}
    _validate(model, shell, where)
    for n, item in enumerate(items):
        if "resource" in item:
            yield from _walk(item["resource"], f"{where}.{field}[{n}].resource", depth + 1)


def _validate(model: type[_Model], item: dict[str, Any], where: str) -> _Model:
    try:
        return model.model_validate(item)
    except ValidationError as exc:
        raise BadRequest(f"{where} ({model.__name__}): {_describe(exc)}") from None
    except (ValueError, KeyError, TypeError):  # the library's own checks, outside pydantic's
        raise BadRequest(f"{where} ({model.__name__}): not a valid resource") from None


def _describe(exc: ValidationError) -> str:
    """The first error's path and kind; input values and client-chosen keys are not echoed."""
    err = exc.errors(include_input=False, include_url=False, include_context=False)[0]
    path = ".".join(
        str(p) if isinstance(p, int) or _SAFE_PART.match(str(p)) else "?" for p in err["loc"]
    )
    return f"{path or 'resource'}: {err['type'].replace('_', ' ')}"
