"""Checks of generated Workflows: through Hera's Argo models (every key must survive a round trip,
so a misspelled key is caught) and against Argo's JSON schema (types; needs `jsonschema`)."""

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from hera.workflows import models as m

WORKFLOW_DEFINITION = "io.argoproj.workflow.v1alpha1.Workflow"


def _differences(a: Any, b: Any, path: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}.{k}: unknown to Hera's Argo model" for k in a if k not in b]
        out += [f"{path}.{k}: added by Hera's Argo model" for k in b if k not in a]
        for k in a.keys() & b.keys():
            out += _differences(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} became {b!r}"]


def hera_problems(workflow: dict) -> list[str]:
    """What Hera's `Workflow` model drops or changes in `workflow` (empty: it knows every key)."""
    try:
        model = m.Workflow.model_validate(workflow)
    except ValueError as error:  # pydantic's ValidationError
        return [str(error)]
    back = json.loads(model.model_dump_json(by_alias=True, exclude_none=True))
    return _differences(workflow, back, "")


@lru_cache(maxsize=2)
def _validator(schema_path: str):
    import jsonschema
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT7

    document = json.loads(Path(schema_path).read_text())
    base = document.get("$id", "urn:argo-workflows-schema")
    registry = Registry().with_resource(base, Resource.from_contents(document, default_specification=DRAFT7))
    return jsonschema.Draft7Validator({"$ref": f"{base}#/definitions/{WORKFLOW_DEFINITION}"}, registry=registry)


def schema_problems(workflow: dict, schema_path: str | Path) -> list[str]:
    """Violations of Argo's JSON schema (draft 7), one line each."""
    errors = sorted(_validator(str(schema_path)).iter_errors(workflow), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors]
