"""The Argo engine: each phase of a run (a generation, or the final stages) as one Argo Workflow,
submitted through the Kubernetes API. The driver (esgd.controller.driver) decides what runs and
when it is committed; this engine only submits a phase's Workflow and waits for its outcome.

Workflow names are (run, phase, attempt), so after a restart the engine finds the attempts already
submitted instead of submitting them again; the driver hands a failed phase back as the next
attempt, at most `generationAttempts` times in all. It imports no worker code and no torch: the
pods run the steps.

It makes three Kubernetes calls, on custom objects `workflows.argoproj.io/v1alpha1`: create, get,
and one list at start to find out that Argo is installed (the chart's Role grants exactly these).
"""

import base64
import gzip
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from esgd.controller.driver import PhaseFailed, RunStopped, patiently
from esgd.core.errors import TRANSIENT_EXIT, InputError, TransientError
from esgd.core.plan import Phase
from esgd.core.spec import RunSpec
from esgd.store.run import RunRef
from esgd.workflows import names
from esgd.workflows.generation import phase_workflow
from esgd.workflows.owner import Owner
from esgd.workflows.settings import ClusterSettings

GROUP, VERSION, PLURAL = "argoproj.io", "v1alpha1", "workflows"
FINISHED = ("Succeeded", "Failed", "Error")
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class ClusterRunError(RunStopped):
    """The cluster cannot be used (no API, a refused call); the message says why."""


class ClusterUnavailable(ClusterRunError, TransientError):
    """The Kubernetes API did not answer, or answered 429/5xx, through every retry: it may pass."""


class AlreadyExists(Exception):
    """A Workflow of that name exists (someone submitted this attempt already)."""


class Workflows(Protocol):
    """The Kubernetes calls the controller makes."""

    def create(self, namespace: str, body: dict, dry_run: bool = False) -> dict:
        """Create the Workflow (dry run: only ask the API server whether it would)."""

    def get(self, namespace: str, name: str) -> dict | None:
        """The Workflow, or None when there is none of that name."""

    def installed(self, namespace: str) -> None:
        """Nothing if Workflows can be listed here; ClusterRunError naming what is missing if not."""


class KubernetesWorkflows:
    """Workflows through the Kubernetes API (in-cluster config, else the local kubeconfig). Each
    request has a timeout; an API that cannot be reached or answers 429/5xx is retried with
    exponential back-off (1, 2, 4, ... 30 s), one line per wait, for `retry_seconds` in all (long
    enough to ride out an API server restart) before ClusterUnavailable."""

    def __init__(
        self,
        api=None,
        retry_seconds: float = 1800,
        timeout: float = 30,
        sleep: Callable[[float], None] = time.sleep,
        log: Callable[[str], None] = print,
    ):
        if api is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                try:
                    config.load_kube_config()
                except (config.ConfigException, OSError) as error:
                    raise ClusterRunError(
                        f"no Kubernetes API: not in a cluster and no usable kubeconfig ({error})"
                    ) from None
            api = client.CustomObjectsApi()
        self.api, self.retry_seconds, self.timeout, self.sleep, self.log = api, retry_seconds, timeout, sleep, log

    def _call(self, fn, *args, **kwargs):
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        def once():
            try:
                return fn(GROUP, VERSION, *args, _request_timeout=self.timeout, **kwargs)
            except ApiException as error:
                if error.status not in (429, 500, 502, 503, 504):
                    raise
                raise ClusterUnavailable(f"the Kubernetes API answered {error.status} {error.reason}") from None
            except HTTPError as error:  # refused, reset, timed out
                raise ClusterUnavailable(
                    f"the Kubernetes API cannot be reached ({type(error).__name__}: {error})"
                ) from None

        def give_up(error: ClusterUnavailable, waited: float) -> ClusterUnavailable:
            return ClusterUnavailable(f"{error}, for {waited:.0f} s")

        return patiently(once, self.retry_seconds, self.sleep, self.log, give_up=give_up)

    def create(self, namespace: str, body: dict, dry_run: bool = False) -> dict:
        from kubernetes.client.exceptions import ApiException

        name = body["metadata"].get("name") or body["metadata"].get("generateName", "")
        try:
            extra = {"dry_run": "All"} if dry_run else {}
            return self._call(self.api.create_namespaced_custom_object, namespace, PLURAL, body, **extra)
        except ApiException as error:
            if error.status == 409:
                raise AlreadyExists(name) from None
            raise ClusterRunError(f"cannot create Workflow {name}: {error.status} {error.reason}") from None

    def get(self, namespace: str, name: str) -> dict | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self._call(self.api.get_namespaced_custom_object, namespace, PLURAL, name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise ClusterRunError(f"cannot read Workflow {name}: {error.status} {error.reason}") from None

    def installed(self, namespace: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:  # a list answers 404 only when the API has no such resource: the CRD is missing
            self._call(self.api.list_namespaced_custom_object, namespace, PLURAL, limit=1)
        except ApiException as error:
            if error.status == 404:
                raise ClusterRunError(NOT_INSTALLED) from None
            raise ClusterRunError(
                f"cannot list Workflows in namespace {namespace}: {error.status} {error.reason}"
            ) from None


NOT_INSTALLED = (
    f"Argo Workflows is not installed: the Kubernetes API has no {PLURAL}.{GROUP}/{VERSION} "
    "(install Argo Workflows, https://argo-workflows.readthedocs.io)"
)


def pod_namespace() -> str | None:
    """The namespace of the pod this runs in; None outside a pod."""
    return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() if SERVICE_ACCOUNT_NAMESPACE.is_file() else None


def current_namespace(settings: ClusterSettings) -> str:
    """The settings' namespace, else this pod's, else the kubeconfig context's, else `default`."""
    if settings.namespace:
        return settings.namespace
    if pod_namespace():
        return pod_namespace()
    try:
        from kubernetes import config

        _, context = config.list_kube_config_contexts()
        return context["context"].get("namespace") or "default"
    except Exception:  # noqa: BLE001 - no usable kubeconfig: the API client will say so when it is made
        return "default"


def status_nodes(workflow: dict) -> dict:
    """The Workflow's nodes. Argo compresses them into `status.compressedNodes` (gzip, base64) when
    the Workflow grows too big for one object (a large µ); nodes offloaded to Argo's database
    (`offloadNodeStatusVersion`) cannot be read from the API: then there are none."""
    status = workflow.get("status") or {}
    if status.get("nodes"):
        return status["nodes"]
    if status.get("compressedNodes"):
        return json.loads(gzip.decompress(base64.b64decode(status["compressedNodes"])))
    return {}


def failed_pods(workflow: dict) -> list[dict]:
    """The Workflow's pods that failed for good: of a retried step only its last try counts (a try
    that failed before a retry succeeded is no reason the Workflow failed)."""
    nodes = status_nodes(workflow)
    earlier = {
        child for node in nodes.values() if node.get("type") == "Retry" for child in (node.get("children") or [])[:-1]
    }
    return [
        node
        for key, node in nodes.items()
        if node.get("type") == "Pod" and node.get("phase") in ("Failed", "Error") and key not in earlier
    ]


def exit_code(pod: dict) -> str | None:
    """A failed pod's exit code: 2, a worker that refused its input (which no retry fixes); 75,
    transient trouble (docs/kubernetes.md)."""
    found = re.search(r"\bexit code (\d+)\b", pod.get("message") or "")
    return (pod.get("outputs") or {}).get("exitCode") or (found and found.group(1))


def pod_message(pod: dict) -> str:
    """A pod's message in one line: Argo's reason and the command's last line (a failed command's
    last log lines are its termination message: FallbackToLogsOnError)."""
    lines = [line for line in (pod.get("message") or "").splitlines() if line.strip()]
    if len(lines) < 2:
        return lines[0] if lines else ""
    reason = re.match(r"^.*?\(exit code \d+\): ?", lines[0])
    return (reason.group(0) if reason else "") + lines[-1].strip()


def failure_reason(workflow: dict, pods: list[dict] | None = None) -> str:
    """The Workflow's message plus a failed pod's (the first of `pods`, by default of those that
    failed for good), e.g. `pod deleted` or an exit code with the worker's line."""
    status = workflow.get("status") or {}
    parts = [status.get("message") or ""]
    for node in failed_pods(workflow) if pods is None else pods:
        if node.get("message"):
            parts.append(f"{node.get('displayName') or node.get('name') or 'a pod'}: {pod_message(node)}")
            break
    return "; ".join(p for p in parts if p) or "no message"


def duration(text: str) -> float:
    """Seconds of an Argo duration: a number of seconds ("30") or a Go duration ("30s", "10m",
    "1h30m"); InputError if it is not one."""
    if text.isdigit():
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    if not parts or "".join(a + b for a, b in parts) != text:
        raise InputError(f"settings: {text!r} is not a duration such as 30s, 10m or 1h")
    return sum(float(value) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit] for value, unit in parts)


def cluster_check(workflows: Workflows, namespace: str, store=None, log: Callable[[str], None] = print) -> None:
    """What `helm test` checks: Argo Workflows is installed, this service account may read and
    create Workflows here (a dry-run create: nothing is made) and, with a store, the store is
    reachable. Raises ClusterRunError (or StoreError) with the first thing that is missing."""
    workflows.installed(namespace)
    log(f"ok: Argo Workflows is installed; Workflows in namespace {namespace} can be listed")
    workflows.get(namespace, "esgd-cluster-check")
    log(f"ok: Workflows in namespace {namespace} can be read")
    workflows.create(namespace, CHECK_WORKFLOW, dry_run=True)
    log(f"ok: Workflows in namespace {namespace} can be created (dry run)")
    if store is not None:
        store.check_writable()
        reachable = f"ok: store {store.uri} is reachable with these credentials"
        log(f"{reachable} (write permission is checked by the first write)")


CHECK_WORKFLOW = {  # the smallest Workflow, for the dry-run create of cluster_check
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "Workflow",
    "metadata": {"generateName": "esgd-cluster-check-"},
    "spec": {"entrypoint": "main", "templates": [{"name": "main", "suspend": {}}]},
}


class ArgoEngine:
    """Phases as Argo Workflows (esgd.workflows.generation), one submission per attempt. A Workflow
    of the phase that an earlier start submitted is waited for if it is still running; if it had
    already failed, this start submits a new attempt (each start gets its `generationAttempts`)."""

    name = "Argo"

    def __init__(
        self,
        workflows: Workflows,
        settings: ClusterSettings,
        namespace: str,
        sleep: Callable[[float], None] = time.sleep,
        log: Callable[[str], None] = print,
        owner: Owner | None = None,
    ):
        self.workflows, self.namespace, self.owner = workflows, namespace, owner
        self.settings = settings.model_copy(update={"namespace": namespace})
        self.sleep, self.log = sleep, log
        self.earlier: dict[str, int] = {}  # phase tag -> failed attempts found from earlier starts
        self.delays = (duration(settings.retry.backoff), settings.retry.factor, duration(settings.retry.cap))

    @property
    def attempts(self) -> int:
        return self.settings.generation_attempts

    def split(self, spec: RunSpec) -> tuple[int, int]:
        return self.settings.pack, self.settings.shard

    def retry_delay(self, attempt: int) -> float:
        """Seconds before the attempt after `attempt`: the pods' retry back-off (retry.backoff x
        retry.factor^attempt, at most retry.cap), so that an outage has time to pass."""
        first, factor, cap = self.delays
        return min(first * factor**attempt, cap)

    def body(self, run: RunRef, phase: Phase, attempt: int) -> dict:
        return phase_workflow(phase, self.settings, run.uri, run.id, attempt, self.owner).to_dict()

    def run_phase(self, run: RunRef, phase: Phase, attempt: int) -> None:
        """Submit attempt `attempt` of the phase's Workflow (or find it, from an earlier start) and
        wait for it; PhaseFailed when it did not succeed, RunStopped when a pod refused its input."""
        while True:
            number = attempt + self.earlier.get(phase.tag, 0)
            name = names.workflow_name(run.id, phase.tag, number)
            found = self.workflows.get(self.namespace, name)
            if found is None:
                try:
                    self.workflows.create(self.namespace, self.body(run, phase, number))
                    self.log(f"submitted {name} ({phase.name})")
                except AlreadyExists:
                    self.log(f"{name} was submitted by someone else meanwhile; waiting for it")
                break
            outcome = (found.get("status") or {}).get("phase")
            if outcome in ("Failed", "Error"):  # not this start's: its attempts get names of their own
                self.log(f"found {name} from an earlier start, {outcome}: {failure_reason(found)}; trying again")
                self.earlier[phase.tag] = self.earlier.get(phase.tag, 0) + 1
                continue
            self.log(f"found {name} from an earlier start; waiting for it")
            break
        workflow = self.wait(name)
        if workflow is None:
            raise PhaseFailed(f"{name} Error: the Workflow was deleted")
        outcome = workflow["status"]["phase"]
        if outcome == "Succeeded":
            return
        pods = failed_pods(workflow)
        refused = [pod for pod in pods if exit_code(pod) == "2"]
        if refused:  # a pod refused its input: the same spec and store would fail the same way
            raise RunStopped(f"{name} {outcome}: {failure_reason(workflow, refused)} (bad input: not retried)")
        transient = bool(pods) and all(exit_code(pod) == str(TRANSIENT_EXIT) for pod in pods)
        raise PhaseFailed(f"{name} {outcome}: {failure_reason(workflow)}", transient=transient)

    def wait(self, name: str) -> dict | None:
        """The Workflow once it has finished (Succeeded, Failed or Error), or None if it was deleted.
        ClusterUnavailable if Argo gives it no status within `statusTimeoutSeconds`: no Argo
        controller watches it (not running, watching other namespaces, or an instanceID)."""
        waited = 0.0
        while True:
            workflow = self.workflows.get(self.namespace, name)
            if workflow is None:
                return None
            phase = (workflow.get("status") or {}).get("phase")
            if phase in FINISHED:
                return workflow
            if not phase and waited >= self.settings.status_timeout_seconds:
                raise ClusterUnavailable(
                    f"{name} has no status after {waited / 60:g} min: is Argo's workflow controller running "
                    f"and watching namespace {self.namespace}? (its --namespaced/--managed-namespace, instanceID)"
                )
            self.sleep(self.settings.poll_seconds)
            waited += self.settings.poll_seconds
