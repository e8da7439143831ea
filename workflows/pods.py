"""The pod side of every Workflow: image, resources, placement, security contexts, retries.
Everything here comes from ClusterSettings; nothing from the run spec."""

import json

from hera.workflows import models as m

from esgd.workflows.settings import ClusterSettings, Pods, mebibytes

USER_ID = 10001  # the image's non-root user (Dockerfile)
TMP = "tmp"  # emptyDir mounted at /tmp: the only writable path (read-only root filesystem)


def pod_security_context() -> m.PodSecurityContext:
    """Pod Security Standard "restricted": non-root, RuntimeDefault seccomp."""
    return m.PodSecurityContext(
        run_as_non_root=True,
        run_as_user=USER_ID,
        run_as_group=USER_ID,
        fs_group=USER_ID,
        seccomp_profile=m.SeccompProfile(type="RuntimeDefault"),
    )


def container_security_context() -> m.SecurityContext:
    return m.SecurityContext(
        allow_privilege_escalation=False,
        read_only_root_filesystem=True,
        run_as_non_root=True,
        capabilities=m.Capabilities(drop=["ALL"]),
    )


def resources(settings: ClusterSettings, pods: Pods) -> m.ResourceRequirements:
    requests = {"cpu": m.Quantity(pods.cpu), "memory": m.Quantity(pods.memory)}
    limits = {"memory": m.Quantity(pods.memory)}
    if pods.gpus:
        requests[settings.gpu_resource] = limits[settings.gpu_resource] = m.Quantity(str(pods.gpus))
    return m.ResourceRequirements(requests=requests, limits=limits)


def tolerations(pods: Pods) -> list[m.Toleration] | None:
    return [m.Toleration(**t.model_dump(exclude_none=True)) for t in pods.tolerations] or None


def memory_on_retry(pods: Pods) -> str:
    """The memory limit as an Argo expression of the try: `memory` more per retry, at most
    `memoryMax` (an out-of-memory kill, exit code 137, is retried like any failure but exit 2)."""
    base = mebibytes(pods.memory)
    most = mebibytes(pods.memory_max) if pods.memory_max else 2 * base
    return "{{=sprig.min(" + f"{most}, (sprig.int(retries) + 1) * {base}" + ")}}Mi"


def pod_spec_patch(pods: Pods) -> str | None:
    """What Argo templates have no field for, as a pod spec patch: the runtime class, and a memory
    limit that grows with the retry count (Argo evaluates `retries` for each try; its main
    container is named `main`)."""
    patch: dict = {}
    if pods.runtime_class_name:
        patch["runtimeClassName"] = pods.runtime_class_name
    if not pods.memory_max or mebibytes(pods.memory_max) > mebibytes(pods.memory):
        patch["containers"] = [{"name": "main", "resources": {"limits": {"memory": memory_on_retry(pods)}}}]
    return json.dumps(patch) if patch else None


def retry_strategy(settings: ClusterSettings) -> m.RetryStrategy:
    r = settings.retry
    return m.RetryStrategy(
        limit=str(r.limit),  # int-or-string fields want strings
        retry_policy=r.policy,
        expression=r.expression or None,
        backoff=m.Backoff(duration=r.backoff, factor=str(r.factor), cap=r.cap),
    )


def s3_credentials(settings: ClusterSettings) -> list[m.EnvFromSource] | None:
    """The S3 Secret as environment variables; without one, the pod's service account gets its
    own credentials (IRSA, workload identity) and the store client finds them."""
    return [m.EnvFromSource(secret_ref=m.SecretEnvSource(name=settings.s3_secret))] if settings.s3_secret else None


def container_options(settings: ClusterSettings, pods: Pods) -> dict:
    """Keyword arguments of a Hera Container for a pod of this kind."""
    return dict(
        image=settings.image,
        image_pull_policy=settings.image_pull_policy,
        resources=resources(settings, pods),
        env_from=s3_credentials(settings),
        security_context=container_security_context(),
        volume_mounts=[m.VolumeMount(name=TMP, mount_path="/tmp")],
        node_selector=pods.node_selector or None,
        tolerations=tolerations(pods),
        priority_class_name=pods.priority_class_name,
        pod_spec_patch=pod_spec_patch(pods),
        retry_strategy=retry_strategy(settings),
        # A command's last lines become the pod's termination message when it fails, and Argo puts
        # that message in the node's: the one line a worker prints on bad input reaches the controller.
        termination_message_policy="FallbackToLogsOnError",
    )


def workflow_options(settings: ClusterSettings, labels: dict[str, str], service_account: str) -> dict:
    """Keyword arguments of a Hera Workflow: metadata, pod defaults, lifetime."""
    ttl = None
    if settings.ttl_after_success is not None or settings.ttl_after_failure is not None:
        ttl = m.TTLStrategy(
            seconds_after_success=settings.ttl_after_success, seconds_after_failure=settings.ttl_after_failure
        )
    return dict(
        namespace=settings.namespace,
        labels=labels,
        pod_metadata=m.Metadata(labels=labels),
        service_account_name=service_account,
        image_pull_secrets=[m.LocalObjectReference(name=n) for n in settings.image_pull_secrets] or None,
        security_context=pod_security_context(),
        volumes=[m.Volume(name=TMP, empty_dir=m.EmptyDirVolumeSource())],
        pod_gc=m.PodGC(strategy=settings.pod_gc_strategy, delete_delay_duration=settings.pod_gc_delay)
        if settings.pod_gc_strategy
        else None,
        ttl_strategy=ttl,
    )
