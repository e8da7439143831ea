"""Experiment trackers: a run's numbers, as the driver commits them, sent to TensorBoard or MLflow.

A tracker is told when a run starts (`start`: the resolved spec, flattened to dotted names), after
each committed generation (`generation`: the summary the driver prints as its progress line, with
the optimizer mix when it has it), when the run has its answer (`finish`: best fitness, the task's
metric, the fine-tuned population, the exported winner) and at the end (`close`). `open_trackers`
makes them from the `--track` syntax, `tensorboard:DIR` and `mlflow:URI`, and checks them before a
run starts: an unknown kind, an empty target or a tracker whose package is not installed is one
line (InputError, exit 2). Once a run is under way, tracking never stops it: a tracker that fails
(a full disk, an MLflow server that cannot be reached after a few retries, BOUNDED) is reported
once on stderr and left out from then on; the run goes on. Nothing of tensorboard or mlflow is imported
unless a target names it. docs/tracking.md is the user's documentation.

Credentials: an MLflow URI's user:password reaches MLflow's client only (HTTP basic auth); it is
never logged, tagged or shown (messages show the URI without it).
"""

import functools
import importlib
import importlib.util
import json
import os
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from esgd.analysis.export import export
from esgd.analysis.report import read_final, read_history
from esgd.core import keys
from esgd.core.errors import InputError
from esgd.core.metrics import summarize
from esgd.core.records import FinalSummary, HistoryRow
from esgd.core.spec import RunSpec, dump_spec
from esgd.core.tables import read_table
from esgd.store.base import redacted
from esgd.store.run import RunRef

KINDS = ("tensorboard", "mlflow")
SYNTAX = "tensorboard:DIR or mlflow:URI"
NOT_PARAMS = frozenset({"tracking"})
"""Top-level spec fields that are not logged as parameters: where a run is tracked is not what it is."""
MAX_PARAM = 500
"""Longest parameter value sent as is (older MLflow servers refuse longer ones); the whole spec is
also logged as text (TensorBoard) or as the artifact spec.yaml (MLflow)."""
DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
"""MLflow URI schemes of its database store, which needs SQLAlchemy (the full `mlflow` package)."""


class Tracker(Protocol):
    """Where a run's numbers go. `name` is shown in messages (free of credentials)."""

    name: str

    def start(self, run_uri: str, spec: RunSpec) -> None:
        """A run starts or resumes: its URI and resolved spec (as parameters, dotted names)."""
        ...

    def generation(self, summary: dict) -> None:
        """One committed generation: esgd.core.metrics.summarize's summary (step = its generation),
        with `optimizers` ({family: share of the trained individuals}) when it has it."""
        ...

    def finish(self, run: RunRef) -> None:
        """The run's answer: its final summary, its fine-tuned population, its exported winner."""
        ...

    def close(self) -> None:
        """Flush and let go; the last call."""
        ...


# --- what is logged, the same for every tracker ------------------------------------------------


def parse_target(target: str) -> tuple[str, str]:
    """(kind, value) of a `--track` target, `tensorboard:DIR` or `mlflow:URI` (`mlflow:` alone: the
    URI of $MLFLOW_TRACKING_URI); InputError naming what is wrong. Imports nothing."""
    text = (target or "").strip()
    if not text:
        raise InputError(f"an empty tracking target: give {SYNTAX}")
    kind, colon, value = text.partition(":")
    if not colon or kind not in KINDS:
        raise InputError(f"tracking target {_shown(text)!r}: unknown kind {kind!r}; give {SYNTAX}")
    value = value.strip()
    if kind == "tensorboard" and not value:
        raise InputError(f"tracking target {text!r} names no folder: give tensorboard:DIR")
    if kind == "tensorboard" and "://" in value:
        raise InputError(f"tracking target {text!r}: TensorBoard logs go to a local folder, not {value}")
    if kind == "mlflow" and not value and not os.environ.get("MLFLOW_TRACKING_URI"):
        raise InputError(f"tracking target {text!r} names no tracking URI and MLFLOW_TRACKING_URI is not set")
    return kind, value


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict with dotted names; lists and None as their JSON text."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out
    name = prefix.rstrip(".")
    if isinstance(value, (bool, int, float, str)):
        return {name: value}
    return {name: json.dumps(value)}


def spec_params(spec: RunSpec) -> dict[str, bool | int | float | str]:
    """The resolved spec as flat parameters (`population.mu`, `sgd.optimizers.adam.lr.low`, ...),
    values longer than MAX_PARAM characters cut with an ellipsis."""
    data = {k: v for k, v in spec.model_dump(mode="json").items() if k not in NOT_PARAMS}
    return {k: _cut(v) for k, v in flatten(data).items()}


def _cut(value):
    return value[: MAX_PARAM - 1] + "…" if isinstance(value, str) and len(value) > MAX_PARAM else value


def optimizer_mix(rows: list[dict]) -> dict[str, float]:
    """Share of each optimizer family among the individuals trained in one generation (its SGD
    step, or its fine-tuning), from that generation's history rows (a history part, or the rows of
    one generation of history.parquet): {family: share}, the shares summing to 1. Offspring are
    not counted (they get an optimizer when they are trained, in the next generation)."""
    if len({r["generation"] for r in rows}) > 1:
        raise ValueError("optimizer_mix takes the rows of one generation")
    trained = [r["optimizer"] for r in rows if r["role"] in ("parent", "finetune") and r["optimizer"]]
    counts = Counter(trained)
    return {name: counts[name] / len(trained) for name in sorted(counts)}


def generation_rows(run: RunRef, generation: int) -> list[dict]:
    """The history rows of a committed generation (its history part, as the driver reads it)."""
    key = keys.history_part(run.id, generation)
    return read_table(run.store.get(key), HistoryRow, key).to_pylist()


def generation_record(run: RunRef, generation: int) -> dict:
    """The driver's summary of a committed generation (esgd.controller.driver.generation_summary)
    with its optimizer mix (`optimizers`), from one read of its history part."""
    rows = generation_rows(run, generation)
    return {**summarize(rows, run.spec.m)[0], "optimizers": optimizer_mix(rows)}


def families(spec: RunSpec) -> list[str]:
    """The optimizer families a run's SGD steps may use (their shares are logged every generation,
    0 for one unused, so each family's curve is whole)."""
    return [spec.single.optimizer] if spec.mode == "single" else sorted(spec.sgd.optimizers)


def scalars(summary: dict, known: list[str] = ()) -> dict[str, float]:
    """The numbers logged for a generation summary, by name: esgd/best, esgd/elite_mean,
    esgd/mean, esgd/band_end (top15's upper end), esgd/offspring_in_elite (not for a generation
    without an evolution step), esgd/backoffs, esgd/optimizer/<family> (when the summary has the
    optimizer mix)."""
    out = {
        "esgd/best": summary["best"],
        "esgd/elite_mean": summary["elite_mean"],
        "esgd/mean": summary["mean"],
        "esgd/band_end": summary["top15"][1],
        "esgd/backoffs": summary["backoffs"],
    }
    if summary["phase"] == "evolution":
        out["esgd/offspring_in_elite"] = summary["offspring_in_elite"]
    mix = summary.get("optimizers")
    if mix is not None:
        for family in sorted(set(known) | set(mix)):
            out[f"esgd/optimizer/{family}"] = mix.get(family, 0.0)
    return {k: float(v) for k, v in out.items() if v is not None}


def metric_key(name: str) -> str:
    """A metric's name as a key: letters, digits, `_`, `-`, `.`, `/`; spaces and the rest as `_`."""
    return re.sub(r"[^A-Za-z0-9_\-./]", "_", name.strip()) or "metric"


def final_scalars(final: FinalSummary) -> dict[str, float]:
    """esgd/final/best_fitness and esgd/final/<the task's metric> (when the task reports one)."""
    out = {"esgd/final/best_fitness": float(final.best_fitness)}
    if final.metric is not None:
        out[f"esgd/final/{metric_key(final.metric_name)}"] = float(final.metric)
    return out


def finetuned(run: RunRef) -> dict | None:
    """The summary of the fine-tuned population (phase `finetune`, numbered K), with its optimizer
    mix; None when the run does not fine-tune."""
    rows = read_history(run.store, run.id)
    last = [r for r in rows if r["generation"] == run.spec.generations and r["role"] == "finetune"]
    if not last:
        return None
    return {**summarize(last, run.spec.m)[0], "optimizers": optimizer_mix(last)}


def run_id_of(run_uri: str) -> str:
    return run_uri.rstrip("/").rpartition("/")[2]


def _shown(text: str) -> str:
    """`text` without any user:password@ of a URL in it, for messages."""
    return re.sub(r"(://)[^/@\s]*@", r"\1", text)


# --- TensorBoard -------------------------------------------------------------------------------


class TensorBoard:
    """Event files under DIR/<run-id> (so `tensorboard --logdir DIR` compares runs): the scalars of
    every generation (step = generation), the spec as hyper-parameters (the HPARAMS tab) and as
    text (esgd/spec), the final numbers at step K, and the winner's weights as
    DIR/<run-id>/winner.safetensors (and winner.json). Written with tensorboard's own event writer:
    neither TensorFlow nor torch is needed."""

    def __init__(self, folder: str):
        self.folder = Path(folder).expanduser()
        self.name = f"tensorboard {self.folder}"
        self.writer = None
        self.known: list[str] = []

    def _write(self, step: int, values: list) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        self.writer.add_event(Event(wall_time=time.time(), step=step, summary=Summary(value=values)))

    @staticmethod
    def _scalars(values: dict[str, float]) -> list:
        from tensorboard.compat.proto.summary_pb2 import Summary

        return [Summary.Value(tag=tag, simple_value=value) for tag, value in values.items()]

    @staticmethod
    def _text(tag: str, text: str):
        from tensorboard.compat.proto import types_pb2
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.compat.proto.tensor_pb2 import TensorProto
        from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
        from tensorboard.plugins.text.metadata import create_summary_metadata

        tensor = TensorProto(
            dtype=types_pb2.DT_STRING,
            string_val=[text.encode()],
            tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]),
        )
        return Summary.Value(tag=tag, metadata=create_summary_metadata(tag, ""), tensor=tensor)

    def start(self, run_uri: str, spec: RunSpec) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.plugins.hparams.summary_v2 import hparams_pb
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        run_id = run_id_of(run_uri)
        self.logdir = self.folder / run_id
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.writer = EventFileWriter(str(self.logdir), flush_secs=30)
        self.known = families(spec)
        self.writer.add_event(Event(wall_time=time.time(), step=0, summary=hparams_pb(spec_params(spec), run_id)))
        spec_text = "\n".join(f"    {line}" for line in dump_spec(spec).splitlines())  # markdown: code block
        self._write(0, [self._text("esgd/run", f"`{redacted(run_uri)}`"), self._text("esgd/spec", spec_text)])
        self.writer.flush()

    def generation(self, summary: dict) -> None:
        if self.writer is None:
            return
        self._write(summary["generation"], self._scalars(scalars(summary, self.known)))
        self.writer.flush()  # a generation takes a while: TensorBoard shows it now

    def finish(self, run: RunRef) -> None:
        final = read_final(run.store, run.id)
        if self.writer is None or final is None:
            return
        step = run.spec.generations
        tuned = finetuned(run)
        if tuned is not None:
            self.generation(tuned)
        weights, about, _ = export(run.store, run.id, None, self.logdir / "winner.safetensors")
        metric = "" if final.metric is None else f"| {final.metric_name} | {final.metric:.6g} |\n"
        text = (
            f"| best member | {final.best_member} |\n|---|---|\n| best fitness | {final.best_fitness:.6g} |\n"
            f"{metric}| weights | {weights.name} (and {about.name}) in this run's folder |"
        )
        self._write(step, [*self._scalars(final_scalars(final)), self._text("esgd/final", text)])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# --- MLflow ------------------------------------------------------------------------------------

BOUNDED = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
"""MLflow's HTTP retries while a tracker talks to it, for each variable not set by the user. With
MLflow's own defaults (7 retries, back-off factor 2, 120 s timeout) a server that cannot be reached
holds the run for minutes before the tracker gives up (4 when the connection is refused, far more
when packets are dropped); with these, seconds (refused) to about a minute and a half (dropped)."""


def _bounded(method):
    """`method` with BOUNDED in the environment (only the variables the user did not set, and
    only while it runs: MLflow reads them on each request)."""

    @functools.wraps(method)
    def call(*args, **kwargs):
        added = [name for name in BOUNDED if name not in os.environ]
        os.environ.update({name: BOUNDED[name] for name in added})
        try:
            return method(*args, **kwargs)
        finally:
            for name in added:
                os.environ.pop(name, None)

    return call


class MLflow:
    """One MLflow run per ESGD run, in the experiment named by $MLFLOW_EXPERIMENT_NAME or else
    the spec's `name`; the MLflow run is named by the run id and tagged esgd.run (its URI), and a
    resumed run goes on in the same MLflow run. Parameters: the spec, flattened (MLflow keeps a
    parameter's first value: one that changed since, `generations` of an extended run, is the tag
    esgd.spec.<name>). Metrics: every generation's (step = generation), the final ones at step K.
    Artifacts: spec.yaml, winner/winner.safetensors and winner/winner.json. Written through
    MlflowClient (no global MLflow state, no automatic tags: user, source, git)."""

    def __init__(self, uri: str):
        from mlflow.tracking import MlflowClient

        self.uri = uri or None  # None: MLflow's own default, $MLFLOW_TRACKING_URI
        shown = redacted(uri or os.environ.get("MLFLOW_TRACKING_URI", ""))
        self.name = f"mlflow {shown}"
        self.client = MlflowClient(tracking_uri=self.uri)
        self.run_id: str | None = None
        self.finished = False
        self.known: list[str] = []

    def _log(self, metrics: dict[str, float] = None, step: int = 0, params: dict = None, tags: dict = None) -> None:
        """One log_batch per chunk of at most 100 parameters or tags, 1000 metrics (MLflow's limits)."""
        from mlflow.entities import Metric, Param, RunTag

        stamp = int(time.time() * 1000)
        entries = [
            *(("metrics", Metric(metric_key(k), v, stamp, step)) for k, v in (metrics or {}).items()),
            *(("params", Param(_param_key(k), str(v))) for k, v in (params or {}).items()),
            *(("tags", RunTag(k, str(v))) for k, v in (tags or {}).items()),
        ]
        for i in range(0, len(entries), 100):
            chunk = entries[i : i + 100]
            self.client.log_batch(
                self.run_id, **{kind: [e for k, e in chunk if k == kind] for kind in ("metrics", "params", "tags")}
            )

    def _experiment(self, spec: RunSpec) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or spec.name
        found = self.client.get_experiment_by_name(name)
        return found.experiment_id if found is not None else self.client.create_experiment(name)

    @_bounded
    def start(self, run_uri: str, spec: RunSpec) -> None:
        run_id, shown = run_id_of(run_uri), redacted(run_uri)
        experiment = self._experiment(spec)
        earlier = [
            r
            for r in self.client.search_runs([experiment], filter_string=f"attributes.run_name = '{run_id}'")
            if r.data.tags.get("esgd.run") == shown
        ]
        params = {_param_key(k): v for k, v in spec_params(spec).items()}
        self.known = families(spec)
        if earlier:  # a resumed (or extended) run: the same MLflow run goes on
            run = earlier[0]
            self.run_id = run.info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            logged = run.data.params
            changed = {f"esgd.spec.{k}": v for k, v in params.items() if k in logged and logged[k] != str(v)}
            self._log(params={k: v for k, v in params.items() if k not in logged}, tags=changed)
        else:
            tags = {"esgd.run": shown, "esgd.run_id": run_id, "esgd.mode": spec.mode, "esgd.task": spec.task}
            self.run_id = self.client.create_run(experiment, run_name=run_id, tags=tags).info.run_id
            self._log(params=params)
        with tempfile.TemporaryDirectory(prefix="esgd-mlflow-") as folder:
            path = Path(folder) / "spec.yaml"
            path.write_text(dump_spec(spec))
            self.client.log_artifact(self.run_id, str(path))

    @_bounded
    def generation(self, summary: dict) -> None:
        if self.run_id is None:
            return
        self._log(metrics=scalars(summary, self.known), step=summary["generation"])

    @_bounded
    def finish(self, run: RunRef) -> None:
        final = read_final(run.store, run.id)
        if self.run_id is None or final is None:
            return
        tuned = finetuned(run)
        if tuned is not None:
            self.generation(tuned)
        tags = {"esgd.best_member": final.best_member, "esgd.metric_name": final.metric_name}
        self._log(metrics=final_scalars(final), step=run.spec.generations, tags=tags)
        with tempfile.TemporaryDirectory(prefix="esgd-mlflow-") as folder:
            weights, about, _ = export(run.store, run.id, None, Path(folder) / "winner.safetensors")
            self.client.log_artifact(self.run_id, str(weights), "winner")
            self.client.log_artifact(self.run_id, str(about), "winner")
        self.client.set_terminated(self.run_id, "FINISHED")
        self.finished = True

    @_bounded
    def close(self) -> None:
        if self.run_id is not None and not self.finished:  # stopped before its answer; resuming goes on
            self.client.set_terminated(self.run_id, "KILLED")
        self.run_id = None


def _param_key(name: str) -> str:
    """A parameter's name as MLflow takes it (letters, digits, `_ - . / : ` and spaces; 250 at most)."""
    return re.sub(r"[^\w\-./: ]", "_", name)[:250]


# --- opening and guarding ----------------------------------------------------------------------


def _installed(kind: str) -> None:
    """InputError when the package of a tracker is not installed."""
    try:
        importlib.import_module(kind)
    except ImportError:
        raise InputError(f"{kind} is not installed: pip install 'esgd[{kind}]'") from None


def _mlflow(target: str, uri: str) -> MLflow:
    """The MLflow tracker of a URI, its client made now: a URI MLflow cannot use is bad input."""
    scheme = uri.partition(":")[0].partition("+")[0] if "://" in uri else ""
    if scheme in DB_SCHEMES and importlib.util.find_spec("sqlalchemy") is None:
        raise InputError(
            f"tracking target {_shown(target)!r}: MLflow's database store needs the full MLflow: pip install mlflow"
        )
    try:
        return MLflow(uri)
    except Exception as error:  # noqa: BLE001 (MLflow's errors for a URI it cannot use: bad input, one line)
        text = str(error)
        if "MLFLOW_ALLOW_FILE_STORE" in text:
            raise InputError(
                f"tracking target {_shown(target)!r}: this MLflow refuses its file store unless "
                "MLFLOW_ALLOW_FILE_STORE=true is set; set it, or use a tracking server (mlflow:http://HOST:5000) "
                "or a database (mlflow:sqlite:///mlflow.db, with pip install mlflow)"
            ) from None
        first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
        raise InputError(f"tracking target {_shown(target)!r}: MLflow cannot use it: {_shown(first)}") from None


class Guarded:
    """A tracker whose failures never reach the run: the first one is one line through `warn`, and
    the tracker is left out from then on (close is still tried, quietly)."""

    def __init__(self, tracker: Tracker, warn: Callable[[str], None]):
        self.tracker, self.warn, self.failed = tracker, warn, False
        self.name = tracker.name

    def _call(self, what: str, *args) -> None:
        if self.failed:
            return
        try:
            getattr(self.tracker, what)(*args)
        except Exception as error:  # noqa: BLE001 (tracking never stops a run: reported once, then left out)
            self.failed = True
            text = _shown(str(error).strip().splitlines()[0] if str(error).strip() else "")
            text = text if len(text) <= 300 else text[:299] + "…"
            detail = f"{type(error).__name__}: {text}" if text else type(error).__name__
            self.warn(f"tracking: {self.name} failed in {what} ({detail}); no more tracking there, the run goes on")

    def start(self, run_uri: str, spec: RunSpec) -> None:
        self._call("start", run_uri, spec)

    def generation(self, summary: dict) -> None:
        self._call("generation", summary)

    def finish(self, run: RunRef) -> None:
        self._call("finish", run)

    def close(self) -> None:
        if self.failed:
            try:
                self.tracker.close()
            except Exception:  # noqa: BLE001 (already reported once; closing what failed may fail again)
                pass
            return
        self._call("close")


class Trackers(list):
    """The trackers of a run (a list of Guarded trackers), itself a Tracker: each call goes to every
    one. A context manager: leaving it closes them."""

    name = "trackers"

    def start(self, run_uri: str, spec: RunSpec) -> None:
        for tracker in self:
            tracker.start(run_uri, spec)

    def generation(self, summary: dict) -> None:
        for tracker in self:
            tracker.generation(summary)

    def observer(self, run: RunRef) -> Callable[[dict], None]:
        """generation(), for the driver's summaries: adds the optimizer mix (read from the
        generation's history part) to a summary that does not have it. Does nothing without trackers."""

        def observe(summary: dict) -> None:
            if not self:
                return
            if "optimizers" not in summary:
                try:
                    summary = {**summary, "optimizers": optimizer_mix(generation_rows(run, summary["generation"]))}
                except Exception:  # noqa: BLE001 (the mix is a nicety: without it, the rest is still logged)
                    pass
            self.generation(summary)

        return observe

    def finish(self, run: RunRef) -> None:
        for tracker in self:
            tracker.finish(run)

    def close(self) -> None:
        for tracker in self:
            tracker.close()

    def __enter__(self) -> "Trackers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def open_trackers(targets: list[str], warn: Callable[[str], None] = _stderr) -> Trackers:
    """The trackers of `--track` targets (`tensorboard:DIR`, `mlflow:URI`), in order, duplicates
    once, each Guarded (failures reported through `warn`, stderr by default). Checked now, before a
    run starts: InputError (one line) for an unknown kind, an empty target, a package that is not
    installed, a TensorBoard folder that is a file, an MLflow URI MLflow cannot use."""
    out = Trackers()
    for target in dict.fromkeys(t.strip() if isinstance(t, str) else t for t in targets):
        kind, value = parse_target(target)
        _installed(kind)
        if kind == "tensorboard":
            folder = Path(value).expanduser()
            if folder.exists() and not folder.is_dir():
                raise InputError(f"tracking target {target!r}: {folder} is a file, not a folder")
            tracker = TensorBoard(value)
        else:
            tracker = _mlflow(target, value)
        out.append(Guarded(tracker, warn))
    return out
