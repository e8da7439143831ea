"""Argo's own JSON schema of Workflows (v4.1.2, vendored under tests/argo/): what the tests check every
generated Workflow against. It checks types, not misspelled keys (esgd.workflows.check does that)."""

import json
from functools import cache
from pathlib import Path

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

SCHEMA = Path(__file__).resolve().parent / "argo" / "workflow-v4.1.2.schema.json"
WORKFLOW_DEFINITION = "io.argoproj.workflow.v1alpha1.Workflow"


@cache
def _validator() -> jsonschema.Draft7Validator:
    document = json.loads(SCHEMA.read_text())
    base = document.get("$id", "urn:argo-workflows-schema")
    registry = Registry().with_resource(base, Resource.from_contents(document, default_specification=DRAFT7))
    return jsonschema.Draft7Validator({"$ref": f"{base}#/definitions/{WORKFLOW_DEFINITION}"}, registry=registry)


def schema_problems(workflow: dict) -> list[str]:
    """Violations of Argo's JSON schema (draft 7), one line each."""
    errors = sorted(_validator().iter_errors(workflow), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors]
