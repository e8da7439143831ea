"""The launcher: a one-pod Workflow that runs the controller (`esgd controller`), which then submits
and watches the run's generation Workflows. `argo submit --wait launcher.yaml` from CI thus runs a
whole ESGD run and fails when the run fails.

The spec and the cluster settings travel inside the Workflow as raw input artifacts (small text
files, mounted read-only); the run's state lives in the store.
"""

from hera.workflows import Container, RawArtifact, Workflow

from esgd.workflows import names
from esgd.workflows.generation import run_labels
from esgd.workflows.pods import container_options, workflow_options
from esgd.workflows.settings import ClusterSettings, dump_settings

SPEC_PATH = "/etc/esgd/spec.yaml"
SETTINGS_PATH = "/etc/esgd/settings.yaml"


# Argo fills these in: the generation Workflows are owned by the launcher (esgd.workflows.owner).
OWNER = "workflow/{{workflow.name}}/{{workflow.uid}}"


def controller_args(store_uri: str, run_id: str) -> list[str]:
    return [
        "controller", SPEC_PATH, "--store", store_uri, "--run-id", run_id, "--settings", SETTINGS_PATH, "--owner", OWNER
    ]  # fmt: skip


def launcher_workflow(spec_text: str, settings: ClusterSettings, store_uri: str, run_id: str) -> Workflow:
    settings_text = dump_settings(settings)
    for what, text in (("spec", spec_text), ("settings", settings_text)):
        if "{{" in text:
            raise ValueError(f"the {what} contains '{{{{', which Argo would take for a template expression")
    labels = run_labels(settings, run_id, "launcher")
    with Workflow(
        generate_name=names.launcher_prefix(run_id),
        entrypoint="controller",
        active_deadline_seconds=settings.launcher_deadline_seconds,
        **workflow_options(settings, labels, settings.controller_service_account_name),
    ) as workflow:
        Container(
            name="controller",
            command=["esgd"],
            args=controller_args(store_uri, run_id),
            inputs=[
                RawArtifact(name="spec", path=SPEC_PATH, data=spec_text),
                RawArtifact(name="settings", path=SETTINGS_PATH, data=settings_text),
            ],
            **container_options(settings, settings.controller),
        )
    return workflow
