"""The Argo engine: each phase of a run (a generation, or the final stages) as one Argo Workflow,
submitted through the Kubernetes API. The driver (esgd.controller.driver) decides what runs and
when it is committed; this engine only submits a phase's Workflow and waits for its outcome.

Workflow names are (run, phase, attempt), so after a restart the engine finds the attempts already
submitted instead of submitting them again; the driver hands a failed phase back as the next
attempt, at most `generationAttempts` times in all. It imports no worker code and no torch: the
pods run the steps.

It makes two Kubernetes calls, on custom objects `workflows.argoproj.io/v1alpha1`: create and get.
"""

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from esgd.controller.driver import PhaseFailed, RunStopped
from esgd.core.errors import TRANSIENT_EXIT, InputError, TransientError
from esgd.core.plan import Phase
from esgd.core.spec import RunSpec
from esgd.store.run import RunRef
from esgd.workflows import names
from esgd.workflows.generation import phase_workflow
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
    """The two calls the controller makes."""

    def create(self, namespace: str, body: dict) -> dict: ...

    def get(self, namespace: str, name: str) -> dict | None:
        """The Workflow, or None when there is none of that name."""


class KubernetesWorkflows:
    """Workflows through the Kubernetes API (in-cluster config, else the local kubeconfig)."""

    def __init__(self, api=None, retries: int = 5, sleep: Callable[[float], None] = time.sleep):
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
        self.api, self.retries, self.sleep = api, retries, sleep

    def _call(self, fn, *args):
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        for attempt in range(self.retries + 1):
            try:
                return fn(GROUP, VERSION, *args)
            except ApiException as error:
                if error.status not in (429, 500, 502, 503, 504):
                    raise
                if attempt == self.retries:
                    raise ClusterUnavailable(f"the Kubernetes API answered {error.status} {error.reason}") from None
            except HTTPError as error:
                if attempt == self.retries:
                    raise ClusterUnavailable(
                        f"the Kubernetes API cannot be reached ({type(error).__name__}: {error})"
                    ) from None
            self.sleep(min(2**attempt, 30))

    def create(self, namespace: str, body: dict) -> dict:
        from kubernetes.client.exceptions import ApiException

        try:
            return self._call(self.api.create_namespaced_custom_object, namespace, PLURAL, body)
        except ApiException as error:
            if error.status == 409:
                raise AlreadyExists(body["metadata"]["name"]) from None
            raise ClusterRunError(
                f"cannot create Workflow {body['metadata']['name']}: {error.status} {error.reason}"
            ) from None

    def get(self, namespace: str, name: str) -> dict | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self._call(self.api.get_namespaced_custom_object, namespace, PLURAL, name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise ClusterRunError(f"cannot read Workflow {name}: {error.status} {error.reason}") from None


def current_namespace(settings: ClusterSettings) -> str:
    """The settings' namespace, else this pod's, else the kubeconfig context's, else `default`."""
    if settings.namespace:
        return settings.namespace
    if SERVICE_ACCOUNT_NAMESPACE.is_file():
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    try:
        from kubernetes import config

        _, context = config.list_kube_config_contexts()
        return context["context"].get("namespace") or "default"
    except Exception:  # noqa: BLE001 - no usable kubeconfig: the API client will say so when it is made
        return "default"


def failed_pods(workflow: dict) -> list[dict]:
    """The Workflow's pods that failed for good: of a retried step only its last try counts (a try
    that failed before a retry succeeded is no reason the Workflow failed)."""
    nodes = (workflow.get("status") or {}).get("nodes") or {}
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
    """What `helm test` checks: the service account may read Workflows here (a get of a name that
    does not exist answers 404, not 403) and, with a store, the store can be written."""
    workflows.get(namespace, "esgd-cluster-check")
    log(f"ok: Workflows in namespace {namespace} can be read")
    if store is not None:
        store.check_writable()
        reachable = f"ok: store {store.uri} is reachable with these credentials"
        log(f"{reachable} (write permission is checked by the first write)")


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
    ):
        self.workflows, self.namespace = workflows, namespace
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
        return phase_workflow(phase, self.settings, run.uri, run.id, attempt).to_dict()

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
        """The Workflow once it has finished (Succeeded, Failed or Error), or None if it was deleted."""
        while True:
            workflow = self.workflows.get(self.namespace, name)
            if workflow is None:
                return None
            if ((workflow.get("status") or {}).get("phase") or "Pending") in FINISHED:
                return workflow
            self.sleep(self.settings.poll_seconds)
