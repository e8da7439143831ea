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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from esgd.core.spec import SpecError, load_yaml

QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$"
UNITS = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def mebibytes(quantity: str) -> int:
    """A memory quantity (matching QUANTITY) in whole MiB, rounded up: "1.5Gi" is 1536."""
    number = quantity.rstrip("".join(UNITS))
    unit = quantity[len(number) :]
    return -(-int(float(number) * UNITS.get(unit, 1)) // 2**20)


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
    memory_max: str | None = Field(default=None, pattern=QUANTITY)
    """Largest memory limit of a retry: each retry of a step (after an out-of-memory kill, say) asks
    for `memory` more, up to this; omitted: twice `memory`; equal to `memory`: no growth."""
    threads: int | None = Field(default=None, ge=1)
    """torch intra-op threads in these pods (`esgd-worker --threads`); omitted: the pod's CPU quota."""

    @model_validator(mode="after")
    def _memory_max_at_least_memory(self):
        if self.memory_max is not None and mebibytes(self.memory_max) < mebibytes(self.memory):
            raise ValueError(f"memoryMax {self.memory_max} is less than memory {self.memory}")
        return self


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
    """Service account of the controller pod (the chart's Role lets it create, get and list Workflows)."""
    s3_secret: str | None = "esgd-s3"
    """Secret passed to every pod as environment variables: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
    and, for S3-compatible stores, AWS_ENDPOINT_URL (and AWS_DEFAULT_REGION if needed); omitted
    (null): no Secret, the pods' service accounts get credentials themselves (IRSA, workload identity)."""
    pack: int = Field(default=1, ge=1)
    """Individuals trained per GPU pod (k): a generation runs ceil(µ/k) training pods."""
    shard: int = Field(default=4, ge=1)
    """Offspring evaluated per GPU pod."""
    retry: Retry = Retry()
    """Per-step retries (preemption and errors)."""
    generation_attempts: int = Field(default=3, ge=1)
    """Failed Workflows of one generation before the controller stops the run (failures on transient
    trouble alone do not count: see `outageSeconds`)."""
    poll_seconds: float = Field(default=10.0, gt=0)
    """How often the controller reads the state of the Workflow it waits for."""
    active_deadline_seconds: int = Field(default=86400, ge=1)
    """Longest run time of one generation's Workflow; past it the Workflow fails (and may be retried)."""
    step_deadline_seconds: int | None = Field(default=7200, ge=1)
    """Longest run time of one try of a step's pod; past it the pod is stopped and the step retried
    (a hung pod holds its generation up no longer than this); omitted: no limit."""
    launcher_deadline_seconds: int | None = Field(default=7 * 86400, ge=1)
    """Longest run time of the controller (launcher Workflow, chart run Job); omitted: no limit."""
    status_timeout_seconds: int = Field(default=600, ge=1)
    """How long the controller waits for a submitted Workflow to get a status from Argo before it
    stops (Argo not installed, or watching other namespaces)."""
    outage_seconds: int = Field(default=1800, ge=0)
    """How long the controller rides out transient trouble before it stops with exit code 75: a
    Kubernetes API that cannot be reached or answers 429/5xx (retried with back-off, 1 to 30 s), and
    generation Workflows whose pods failed only on transient trouble (exit code 75: a store that
    cannot be reached), which are submitted again after the pods' retry back-off and do not count
    against `generationAttempts`."""
    api_timeout_seconds: float = Field(default=30, gt=0)
    """Timeout of one Kubernetes API request (connect and read)."""
    parallelism: int | None = Field(default=16, ge=1)
    """Most pods of one Workflow running at once (at most this many GPUs per run); omitted: no limit."""
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
        text = Path(path).read_text()
    except OSError as error:
        raise SpecError(f"cannot read settings {path}: {error.strerror}") from None
    return parse_settings(load_yaml(text, f"settings {path}") or {}, str(path))  # strict: no duplicate keys


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
