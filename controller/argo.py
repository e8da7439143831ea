"""The cluster executor: drives a run's generations as Argo Workflows through the Kubernetes API.

It decides what to run exactly like the local executor (the committed state in the store, read by
`committed_generations`), submits that phase's Workflow (generation k, with `init` first in
generation 0, then the final stages), waits for it, and advances when the store shows the phase
committed. Workflow names are (run, phase, attempt), so after a restart the controller finds the
attempts already submitted instead of submitting them again; a failed phase is submitted again
as the next attempt, at most `generationAttempts` times in all, then the run stops with the reason.

It makes two Kubernetes calls, on custom objects `workflows.argoproj.io/v1alpha1`: create and get.
"""

import time
from pathlib import Path
from typing import Callable, Protocol

from esgd.controller.local import committed_generations, generation_summary
from esgd.core import keys
from esgd.core.metrics import progress_line
from esgd.workflows import names
from esgd.workflows.generation import phase_workflow
from esgd.workflows.settings import ClusterSettings
from esgd.worker.run import Run

GROUP, VERSION, PLURAL = "argoproj.io", "v1alpha1", "workflows"
FINISHED = ("Succeeded", "Failed", "Error")
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

Phase = int | str  # a generation, or names.FINAL


class ClusterRunError(Exception):
    """The run stopped on the cluster; the message says why."""


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
                    raise ClusterRunError(f"no Kubernetes API: not in a cluster and no usable kubeconfig ({error})") from None
            api = client.CustomObjectsApi()
        self.api, self.retries, self.sleep = api, retries, sleep

    def _call(self, fn, *args):
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        for attempt in range(self.retries + 1):
            try:
                return fn(GROUP, VERSION, *args)
            except ApiException as error:
                transient = error.status in (429, 500, 502, 503, 504)
                if not transient or attempt == self.retries:
                    raise
            except HTTPError as error:
                if attempt == self.retries:
                    raise ClusterRunError(f"the Kubernetes API cannot be reached ({type(error).__name__}: {error})") from None
            self.sleep(min(2**attempt, 30))

    def create(self, namespace: str, body: dict) -> dict:
        from kubernetes.client.exceptions import ApiException

        try:
            return self._call(self.api.create_namespaced_custom_object, namespace, PLURAL, body)
        except ApiException as error:
            if error.status == 409:
                raise AlreadyExists(body["metadata"]["name"]) from None
            raise ClusterRunError(f"cannot create Workflow {body['metadata']['name']}: {error.status} {error.reason}") from None

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
    except Exception:  # no kubeconfig: the API client will say so
        return "default"


def next_phase(run: Run) -> Phase | None:
    """What runs next: the first generation not committed, then the final stages, then nothing."""
    done = committed_generations(run)
    if done < run.spec.generations:
        return done
    return None if run.store.exists(keys.final_manifest(run.id)) else names.FINAL


def describe(phase: Phase) -> str:
    return "the final stages" if phase == names.FINAL else f"generation {phase}"


def failure_reason(workflow: dict) -> str:
    """The Workflow's message plus the first failed pod's, e.g. `pod deleted` or an exit code."""
    status = workflow.get("status") or {}
    parts = [status.get("message") or ""]
    for node in (status.get("nodes") or {}).values():
        if node.get("type") == "Pod" and node.get("phase") in ("Failed", "Error") and node.get("message"):
            parts.append(f"{node.get('displayName', node.get('name'))}: {node['message']}")
            break
    return "; ".join(p for p in parts if p) or "no message"


def cluster_check(workflows: Workflows, namespace: str, store=None, log: Callable[[str], None] = print) -> None:
    """What `helm test` checks: the service account may read Workflows here (a get of a name that
    does not exist answers 404, not 403) and, with a store, the store can be written."""
    workflows.get(namespace, "esgd-cluster-check")
    log(f"ok: Workflows in namespace {namespace} can be read")
    if store is not None:
        store.check_writable()
        log(f"ok: store {store.uri} is reachable with these credentials (write permission is checked by the first write)")


class Controller:
    def __init__(
        self, workflows: Workflows, run: Run, settings: ClusterSettings, namespace: str,
        sleep: Callable[[float], None] = time.sleep, log: Callable[[str], None] = print,
    ):
        self.workflows, self.run, self.namespace = workflows, run, namespace
        self.settings = settings.model_copy(update={"namespace": namespace})
        self.sleep, self.log = sleep, log

    def drive(self) -> None:
        """Run every phase not yet committed; raises ClusterRunError when the run stops."""
        while (phase := next_phase(self.run)) is not None:
            began = time.monotonic()
            self.complete(phase)
            if phase != names.FINAL:
                summary = generation_summary(self.run, phase)
                self.log(progress_line(summary, self.run.spec.generations, time.monotonic() - began))
        self.log(f"run {self.run.id} is complete")

    def body(self, phase: Phase, attempt: int) -> dict:
        return phase_workflow(self.run.spec, self.settings, self.run.uri, self.run.id, phase, attempt).to_dict()

    def complete(self, phase: Phase) -> None:
        """Submit (or find) attempts of `phase` until one commits it."""
        last = ""
        for attempt in range(self.settings.generation_attempts):
            name = names.workflow_name(self.run.id, phase, attempt)
            if self.workflows.get(self.namespace, name) is None:
                try:
                    self.workflows.create(self.namespace, self.body(phase, attempt))
                    self.log(f"submitted {name} ({describe(phase)})")
                except AlreadyExists:
                    self.log(f"{name} was submitted by someone else meanwhile; waiting for it")
            else:
                self.log(f"found {name} from an earlier start; waiting for it")
            outcome, reason = self.wait(name)
            if next_phase(self.run) != phase:
                return  # committed (also when the outcome says otherwise: e.g. a successful Workflow deleted by its TTL)
            if outcome == "Succeeded":
                raise ClusterRunError(
                    f"{name} succeeded but {describe(phase)} is not committed in {self.run.uri}: "
                    "do the pods and the controller use the same store?"
                )
            last = f"{name} {outcome}: {reason}"
            left = self.settings.generation_attempts - attempt - 1
            self.log(last + (f"; on to the next attempt ({left} left)" if left else ""))
        raise ClusterRunError(f"{describe(phase)} failed {self.settings.generation_attempts} time(s); last: {last}")

    def wait(self, name: str) -> tuple[str, str]:
        """(Succeeded | Failed | Error, reason) once the Workflow has finished."""
        while True:
            workflow = self.workflows.get(self.namespace, name)
            if workflow is None:
                return "Error", "the Workflow was deleted"
            phase = (workflow.get("status") or {}).get("phase") or "Pending"
            if phase in FINISHED:
                return phase, failure_reason(workflow)
            self.sleep(self.settings.poll_seconds)
