"""Cluster settings: everything about *where and how* a run's pods run, kept apart from the run
spec (*what* is computed). One YAML file, camelCase keys; the Helm chart renders its `settings:`
values verbatim into the ConfigMap `<release>-settings` (key `settings.yaml`), so the chart, the
controller and `esgd compile --settings` read the same file. The docstrings below are the
reference (docs/kubernetes.md lists them).
"""

import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from esgd.core.spec import SpecError

QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$"


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True, use_attribute_docstrings=True
    )


class Toleration(_Model):
    """A Kubernetes toleration (core/v1 Toleration)."""

    key: str | None = None
    """Taint key; omitted with operator Exists: tolerate every taint."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """Exists (any value) or Equal (the value below)."""
    value: str | None = None
    """Taint value, for operator Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to tolerate; omitted: every effect."""
    toleration_seconds: int | None = Field(default=None, ge=0)
    """For NoExecute: how long the pod stays bound after the taint appears."""


class Pods(_Model):
    """Resources and placement of one kind of pod."""

    cpu: str = Field(default="1", pattern=QUANTITY)
    """CPU request (Kubernetes quantity, e.g. "500m", "4")."""
    memory: str = Field(default="2Gi", pattern=QUANTITY)
    """Memory request, also used as the limit (e.g. "8Gi")."""
    gpus: int = Field(default=0, ge=0)
    """GPUs per pod (requested and limited as `gpuResource`); 0: a CPU-only pod."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels the pod must match (e.g. a GPU node pool)."""
    tolerations: list[Toleration] = Field(default_factory=list)
    """Taints the pod tolerates (e.g. nvidia.com/gpu on GPU nodes, spot-instance taints)."""
    priority_class_name: str | None = None
    """PriorityClass of the pods; omitted: the cluster default."""
    runtime_class_name: str | None = None
    """RuntimeClass of the pods (e.g. "nvidia" where the GPU runtime is not the default one)."""


class Retry(_Model):
    """Argo retryStrategy of every worker pod: covers preemption (node shutdown, pod deleted,
    eviction) and transient errors. Worker exit code 2 (bad input) is not retried: it would fail
    the same way again."""

    limit: int = Field(default=3, ge=0)
    """Retries per step after the first attempt."""
    policy: Literal["Always", "OnFailure", "OnError", "OnTransientError"] = "Always"
    """Which failures are retried before `expression` is asked (Always: failed and errored pods)."""
    expression: str = (
        'lastRetry.status == "Error" || lastRetry.message matches "node shutdown|pod deleted|[Ee]vict|[Pp]reempt"'
        ' || lastRetry.exitCode != "2"'
    )
    """Argo expression that must hold for another retry (empty: no condition)."""
    backoff: str = "30s"
    """Wait before the first retry (Argo duration)."""
    factor: int = Field(default=2, ge=1)
    """Each further wait is the previous one times this factor."""
    cap: str = "10m"
    """Longest wait between two retries (Argo duration)."""


class GpuPods(Pods):
    """Pods of the GPU steps; the defaults differ from CPU pods."""

    cpu: str = Field(default="4", pattern=QUANTITY)
    """CPU request (Kubernetes quantity, e.g. "500m", "4")."""
    memory: str = Field(default="16Gi", pattern=QUANTITY)
    """Memory request, also used as the limit (e.g. "8Gi")."""
    gpus: int = Field(default=1, ge=0)
    """GPUs per pod (requested and limited as `gpuResource`); 0: a CPU-only pod."""
    tolerations: list[Toleration] = Field(
        default_factory=lambda: [Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")]
    )
    """Taints the pod tolerates (default: the nvidia.com/gpu taint of GPU node pools)."""


class CpuPods(Pods):
    """Pods of the CPU steps."""

    cpu: str = Field(default="2", pattern=QUANTITY)
    """CPU request (Kubernetes quantity, e.g. "500m", "4")."""
    memory: str = Field(default="8Gi", pattern=QUANTITY)
    """Memory request, also used as the limit (e.g. "8Gi")."""


class ControllerPods(Pods):
    """The controller pod."""

    cpu: str = Field(default="250m", pattern=QUANTITY)
    """CPU request (Kubernetes quantity, e.g. "500m", "4")."""
    memory: str = Field(default="1Gi", pattern=QUANTITY)
    """Memory request, also used as the limit (e.g. "8Gi")."""


class ClusterSettings(_Model):
    """Where and how a run's pods run on a cluster."""

    namespace: str | None = None
    """Namespace of the Workflows; omitted: the controller pod's namespace (`argo submit -n` for compiled files)."""
    image: str = "esgd:0.1.0"
    """Container image of every pod (controller and workers): see the Dockerfile."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    """Image pull policy of every pod."""
    image_pull_secrets: list[str] = Field(default_factory=list)
    """Names of Secrets to pull the image with."""
    gpu_resource: str = "nvidia.com/gpu"
    """Extended resource name of a GPU on this cluster."""
    gpu: GpuPods = GpuPods()
    """GPU pods: init, train, evaluate and finetune steps (`gpus: 0` runs them on CPUs)."""
    cpu: CpuPods = CpuPods()
    """CPU pods: evolve (reads the parameter vectors, writes λ offspring), select, finish."""
    controller: ControllerPods = ControllerPods()
    """The controller pod (launcher Workflow, chart run Job, helm test)."""
    service_account_name: str = "esgd-workflow"
    """Service account of the worker pods (the chart's Role lets it write workflowtaskresults)."""
    controller_service_account_name: str = "esgd-controller"
    """Service account of the controller pod (the chart's Role lets it create and watch Workflows)."""
    s3_secret: str = "esgd-s3"
    """Secret passed to every pod as environment variables: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
    and, for S3-compatible stores, AWS_ENDPOINT_URL (and AWS_DEFAULT_REGION if needed)."""
    pack: int = Field(default=1, ge=1)
    """Individuals trained per GPU pod (k): a generation runs ceil(µ/k) training pods."""
    shard: int = Field(default=4, ge=1)
    """Offspring evaluated per GPU pod."""
    retry: Retry = Retry()
    """Per-step retries (preemption and errors)."""
    generation_attempts: int = Field(default=3, ge=1)
    """Times the controller submits a generation's Workflow before it stops the run."""
    poll_seconds: float = Field(default=10.0, gt=0)
    """How often the controller reads the state of the Workflow it waits for."""
    active_deadline_seconds: int = Field(default=86400, ge=1)
    """Longest run time of one generation's Workflow; past it the Workflow fails (and may be retried)."""
    parallelism: int | None = Field(default=None, ge=1)
    """Most pods of one Workflow running at once; omitted: no limit."""
    pod_gc_strategy: Literal["OnPodCompletion", "OnPodSuccess", "OnWorkflowCompletion", "OnWorkflowSuccess"] | None = (
        "OnPodSuccess"
    )
    """When finished pods are deleted (omitted: never); failed pods are kept for their logs by OnPodSuccess."""
    pod_gc_delay: str | None = "10m"
    """How long finished pods are kept before pod GC deletes them (Argo duration)."""
    ttl_after_success: int | None = Field(default=3600, ge=0)
    """Seconds a succeeded Workflow is kept; omitted: kept."""
    ttl_after_failure: int | None = Field(default=7 * 86400, ge=0)
    """Seconds a failed Workflow is kept; omitted: kept."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Extra labels on every Workflow and pod (e.g. a team or cost centre)."""


def load_settings(path: str | Path | None) -> ClusterSettings:
    """Settings from a YAML file (no path: every default); SpecError names the bad field."""
    if path is None:
        return ClusterSettings()
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as error:
        raise SpecError(f"cannot read settings {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise SpecError(f"settings {path} is not valid YAML: {error}".splitlines()[0]) from None
    return parse_settings(data, str(path))


def parse_settings(data: object, where: str = "settings") -> ClusterSettings:
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a mapping at the top level")
    try:
        return ClusterSettings.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        loc = ".".join(str(part) for part in first["loc"]) or "settings"
        raise SpecError(f"{where}: {loc}: {first['msg'].removeprefix('Value error, ')}") from None


def dump_settings(settings: ClusterSettings) -> str:
    """The settings as YAML with camelCase keys (the format load_settings reads)."""
    return yaml.safe_dump(settings.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False)


def json_schema() -> dict:
    """JSON schema of the settings file (camelCase keys, unknown keys rejected)."""
    return ClusterSettings.model_json_schema(by_alias=True)


def reference_markdown() -> str:
    """A Markdown table of every setting (key, default, docstring): docs/kubernetes.md holds it."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]

    def walk(instance: BaseModel, prefix: str) -> None:
        dumped = instance.model_dump(mode="json", by_alias=True)
        for name, field in type(instance).model_fields.items():
            key = field.alias or name
            value = getattr(instance, name)
            if isinstance(value, BaseModel):
                walk(value, f"{prefix}{key}.")
                continue
            shown = json.dumps(drop_none(dumped[key])).replace("|", "\\|")
            text = " ".join((field.description or "").split()).replace("|", "\\|")
            rows.append(f"| `{prefix}{key}` | `{shown}` | {text} |")

    walk(ClusterSettings(), "")
    return "\n".join(rows) + "\n"


def drop_none(node):
    """A copy of nested dicts and lists without the None values (as the settings file omits them)."""
    if isinstance(node, dict):
        return {k: drop_none(v) for k, v in node.items() if v is not None}
    if isinstance(node, list):
        return [drop_none(v) for v in node]
    return node
