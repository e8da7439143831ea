"""The pod side of every Workflow: image, resources, placement, security contexts, retries.
Everything here comes from ClusterSettings; nothing from the run spec."""

import json

from hera.workflows import models as m

from esgd.workflows.settings import ClusterSettings, Pods

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


def pod_spec_patch(pods: Pods) -> str | None:
    """Argo templates have no runtimeClassName field: it goes in as a pod spec patch."""
    return json.dumps({"runtimeClassName": pods.runtime_class_name}) if pods.runtime_class_name else None


def retry_strategy(settings: ClusterSettings) -> m.RetryStrategy:
    r = settings.retry
    return m.RetryStrategy(
        limit=str(r.limit),  # int-or-string fields want strings
        retry_policy=r.policy,
        expression=r.expression or None,
        backoff=m.Backoff(duration=r.backoff, factor=str(r.factor), cap=r.cap),
    )


def container_options(settings: ClusterSettings, pods: Pods) -> dict:
    """Keyword arguments of a Hera Container for a pod of this kind."""
    return dict(
        image=settings.image,
        image_pull_policy=settings.image_pull_policy,
        resources=resources(settings, pods),
        env_from=[m.EnvFromSource(secret_ref=m.SecretEnvSource(name=settings.s3_secret))],
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
