"""Deterministic Kubernetes names of a run's Workflows: (run, phase, attempt) -> one name, so a
second submission of the same attempt is refused by the API server (409) instead of duplicated."""

import hashlib
import re

MAX_NAME = 63  # Argo copies the Workflow name into a label value, which is at most 63 characters


def dns_label(text: str, room: int) -> str:
    """`text` as a DNS-1123 label of at most `room` characters; a short hash keeps cut or altered
    names distinct."""
    clean = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "run"
    if clean == text and len(clean) <= room:
        return clean
    digest = hashlib.sha256(text.encode()).hexdigest()[:6]
    return f"{clean[: room - 7].rstrip('-')}-{digest}"


def workflow_name(run_id: str, tag: str, attempt: int = 0) -> str:
    """Name of attempt `attempt` of a phase's Workflow of a run; `tag` is the phase's (Phase.tag:
    `g0003` for a generation, `final` for the final stages)."""
    suffix = f"-{tag}-a{attempt}"
    return dns_label(run_id, MAX_NAME - len(suffix)) + suffix


def launcher_prefix(run_id: str) -> str:
    """generateName of a run's launcher Workflow: each `argo submit` makes a new one (the controller
    inside resumes the run), so a CI job can simply be re-run."""
    suffix = "-launcher-"
    return dns_label(run_id, MAX_NAME - 5 - len(suffix)) + suffix


def label_value(text: str) -> str:
    return dns_label(text, MAX_NAME)
