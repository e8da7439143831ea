"""The check `esgd compile` makes of every Workflow it writes: through Hera's Argo models, where every
key must survive a round trip, so a misspelled key is caught. (The tests also check Workflows
against Argo's JSON schema: tests/argo.)"""

import json
from typing import Any

from hera.workflows import models as m


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
