"""Who owns a run's generation Workflows: the object that runs the controller (the launcher
Workflow, or the chart's run Job). Each generation Workflow carries an ownerReference to it, so
deleting the launcher (cancelling a CI job, `argo delete`, `helm uninstall`) deletes the
generation Workflows and their GPU pods through Kubernetes' garbage collector, instead of leaving
them running unwatched.

The controller learns its owner from `esgd controller --owner KIND/NAME/UID`: the launcher passes
`workflow/{{workflow.name}}/{{workflow.uid}}`, the chart's Job its name and its pods'
`batch.kubernetes.io/controller-uid` label.
"""

from dataclasses import dataclass

from hera.workflows import models as m

from esgd.core.errors import InputError

API_VERSIONS = {"workflow": ("argoproj.io/v1alpha1", "Workflow"), "job": ("batch/v1", "Job")}


@dataclass(frozen=True)
class Owner:
    kind: str  # a key of API_VERSIONS
    name: str
    uid: str

    @classmethod
    def parse(cls, text: str) -> "Owner":
        """`workflow/NAME/UID` or `job/NAME/UID`; InputError naming the expected form otherwise."""
        kind, _, rest = text.partition("/")
        name, _, uid = rest.partition("/")
        if kind.lower() not in API_VERSIONS or not name or not uid or "/" in uid:
            raise InputError(f"--owner: expected workflow/NAME/UID or job/NAME/UID, got {text!r}")
        return cls(kind.lower(), name, uid)

    def reference(self) -> m.OwnerReference:
        """The ownerReference of a generation Workflow. Not `controller` (the owner does not manage
        it as its own) and no `blockOwnerDeletion` (that needs update rights on the owner)."""
        api_version, kind = API_VERSIONS[self.kind]
        return m.OwnerReference(api_version=api_version, kind=kind, name=self.name, uid=self.uid)

    def __str__(self) -> str:
        return f"{API_VERSIONS[self.kind][1]} {self.name}"
