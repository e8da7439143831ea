"""Experiment trackers (docs/tracking.md): a tiny real run's generation summaries, as the driver
makes them while it runs, sent to TensorBoard and MLflow and read back with their own readers."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from esgd.analysis.report import read_final, read_history
from esgd.analysis.tracking import (
    BOUNDED,
    MLflow,
    TensorBoard,
    Trackers,
    flatten,
    generation_record,
    open_trackers,
    optimizer_mix,
    parse_target,
    spec_params,
)
from esgd.controller import local
from esgd.controller.driver import generation_summary
from esgd.core.errors import InputError

from helpers import small, start

RUN = "tracked"


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A finished tiny run (3 optimizer families, fine-tuned) and the summaries its driver made,
    captured while it ran: after each progress line, the committed generation's record."""
    root = tmp_path_factory.mktemp("tracking")
    data = small(generations=3, finetune={"epochs": 1})
    run = start(str(root / "store"), data, RUN).ref
    records = []

    def progress(line: str) -> None:
        if line.startswith("gen "):
            records.append(generation_record(run, len(records)))

    local.execute(run, "cpu", progress=progress)
    assert len(records) == run.spec.generations
    return run, records


def send(target: str, run, records: list[dict]) -> None:
    """A whole run through one tracker, as esgd run drives it: start, each generation, finish."""
    with open_trackers([target]) as trackers:
        trackers.start(run.uri, run.spec)
        for record in records:
            trackers.generation(record)
        trackers.finish(run)


def f32(value: float) -> float:
    """What TensorBoard keeps of a scalar: a float32."""
    return float(np.float32(value))


# --- no tracker's package unless configured ------------------------------------------------------


def test_importing_the_tracking_module_imports_neither_tensorboard_nor_mlflow_nor_torch():
    code = "import sys, esgd.analysis.tracking; print('\\n'.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = {name.split(".")[0] for name in done.stdout.split()}
    assert not loaded & {"tensorboard", "mlflow", "torch", "tensorflow"}


def test_opening_a_tensorboard_tracker_imports_no_mlflow(tmp_path):
    code = f"import sys\nfrom esgd.analysis.tracking import open_trackers\nopen_trackers(['tensorboard:{tmp_path}'])\n"
    code += "print('\\n'.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = {name.split(".")[0] for name in done.stdout.split()}
    assert "tensorboard" in loaded and not loaded & {"mlflow", "torch", "tensorflow"}


# --- targets ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target, message",
    [
        ("", "an empty tracking target: give tensorboard:DIR or mlflow:URI"),
        ("   ", "an empty tracking target"),
        ("wandb:proj", "unknown kind 'wandb'"),
        ("runs/tb", "unknown kind 'runs/tb'"),
        ("tensorboard:", "names no folder"),
        ("tensorboard:s3://bucket/tb", "TensorBoard logs go to a local folder"),
        ("mlflow:", "names no tracking URI and MLFLOW_TRACKING_URI is not set"),
    ],
)
def test_bad_targets_are_one_line(target, message, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(InputError, match=message) as caught:
        open_trackers([target])
    assert "\n" not in str(caught.value)


def test_an_unknown_kind_does_not_show_credentials():
    with pytest.raises(InputError) as caught:
        parse_target("mlfow:http://alice:s3cret@mlflow.example.com")
    assert "s3cret" not in str(caught.value) and "mlflow.example.com" in str(caught.value)


@pytest.mark.parametrize("kind", ["tensorboard", "mlflow"])
def test_a_tracker_whose_package_is_not_installed(kind, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, kind, None)  # what `import` does for a package that is not there
    with pytest.raises(InputError, match=rf"^{kind} is not installed: pip install 'esgd\[{kind}\]'$"):
        open_trackers([f"{kind}:{tmp_path}"])


def test_a_tensorboard_folder_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="is a file, not a folder"):
        open_trackers([f"tensorboard:{tmp_path / 'file'}"])


def test_mlflow_s_refused_file_store_is_one_line_saying_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    try:
        MLflow(f"file:{tmp_path / 'probe'}")
    except Exception:  # noqa: BLE001 (any refusal: this MLflow gates its file store)
        pass
    else:
        pytest.skip("this MLflow still takes a file store without MLFLOW_ALLOW_FILE_STORE")
    with pytest.raises(InputError, match="MLFLOW_ALLOW_FILE_STORE=true") as caught:
        open_trackers([f"mlflow:file:{tmp_path / 'mlruns'}"])
    assert "\n" not in str(caught.value)


def test_same_targets_once(tmp_path):
    trackers = open_trackers([f"tensorboard:{tmp_path}", f" tensorboard:{tmp_path} "])
    assert len(trackers) == 1 and trackers[0].name == f"tensorboard {tmp_path}"


# --- what is logged -----------------------------------------------------------------------------


def test_the_spec_flattens_to_dotted_names(tracked):
    run, _ = tracked
    params = spec_params(run.spec)
    assert params["population.mu"] == run.spec.population.mu
    assert params["sgd.optimizers.adam.lr.low"] == run.spec.sgd.optimizers["adam"].lr.low
    assert params["sgd.batch_size"] == "[64]" and params["population.init.checkpoint"] == "null"
    assert params["task_args.hidden"] == 8 and params["mode"] == "esgd"
    assert flatten({"a": {"b": [1, "x"], "c": {"d": None}}}) == {"a.b": '[1, "x"]', "a.c.d": "null"}


def test_the_records_are_the_driver_s_summaries_with_the_optimizer_mix(tracked):
    run, records = tracked
    rows = read_history(run.store, run.id)
    for record in records:
        g = record["generation"]
        assert {k: v for k, v in record.items() if k != "optimizers"} == generation_summary(run, g)
        trained = [r["optimizer"] for r in rows if r["generation"] == g and r["role"] == "parent"]
        assert record["optimizers"] == {o: trained.count(o) / len(trained) for o in set(trained)}
        assert sum(record["optimizers"].values()) == pytest.approx(1.0)
    assert len({name for r in records for name in r["optimizers"]}) > 1  # a real mix
    with pytest.raises(ValueError, match="one generation"):
        optimizer_mix(rows)


# --- TensorBoard --------------------------------------------------------------------------------


def test_tensorboard_event_files_hold_the_summaries(tracked, tmp_path):
    from safetensors.numpy import load_file
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    run, records = tracked
    send(f"tensorboard:{tmp_path / 'tb'}", run, records)
    logdir = tmp_path / "tb" / RUN
    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    tuned = [s for s in records if s["phase"] == "finetune"]
    assert not tuned  # the driver summarizes generations; the fine-tuned population comes with finish
    K = run.spec.generations

    def series(tag):
        return [(e.step, e.value) for e in events.Scalars(tag)]

    for name in ("best", "elite_mean", "mean", "offspring_in_elite", "backoffs"):
        assert series(f"esgd/{name}")[:K] == [(r["generation"], f32(r[name])) for r in records], name
    assert series("esgd/band_end")[:K] == [(r["generation"], f32(r["top15"][1])) for r in records]
    for family in ("sgd", "nesterov", "adam"):  # every family of the spec, 0 when unused
        assert series(f"esgd/optimizer/{family}")[:K] == [
            (r["generation"], f32(r["optimizers"].get(family, 0.0))) for r in records
        ]
    # finish: the fine-tuned population at step K, the final numbers, the winner
    final = read_final(run.store, run.id)
    rows = [r for r in read_history(run.store, run.id) if r["generation"] == K]
    assert series("esgd/best")[K] == (K, f32(min(r["fitness"] for r in rows if r["selected"])))
    assert series("esgd/final/best_fitness") == [(K, f32(final.best_fitness))]
    assert series("esgd/final/error_rate") == [(K, f32(final.metric))]
    assert "esgd/offspring_in_elite" not in [t for t in events.Tags()["scalars"] if series(t)[-1][0] == K]
    spec_text = events.Tensors("esgd/spec")[0].tensor_proto.string_val[0].decode()
    assert f"name: {run.spec.name}" in spec_text
    final_text = events.Tensors("esgd/final")[0].tensor_proto.string_val[0].decode()
    assert final.best_member in final_text
    (content,) = events.PluginTagToContent("hparams").values()  # the spec, as the HPARAMS tab reads it
    hparams = HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["population.mu"].number_value == run.spec.population.mu
    assert hparams["mode"].string_value == "esgd" and hparams["sgd.batch_size"].string_value == "[64]"
    assert len(hparams) == len(spec_params(run.spec))
    weights = load_file(str(logdir / "winner.safetensors"))
    assert weights and (logdir / "winner.json").is_file()


def test_tensorboard_failing_at_runtime_warns_once_and_the_run_goes_on(tracked, tmp_path):
    run, records = tracked
    (tmp_path / "blocker").write_text("")  # DIR/<run-id> cannot be made under a file
    warnings = []
    trackers = open_trackers([f"tensorboard:{tmp_path / 'blocker' / 'tb'}"], warn=warnings.append)
    trackers.start(run.uri, run.spec)
    for record in records:
        trackers.generation(record)
    trackers.finish(run)
    trackers.close()
    assert len(warnings) == 1
    assert warnings[0].startswith(f"tracking: tensorboard {tmp_path / 'blocker' / 'tb'} failed in start (")
    assert warnings[0].endswith("no more tracking there, the run goes on")


# --- MLflow -------------------------------------------------------------------------------------


@pytest.fixture
def file_store(tmp_path, monkeypatch) -> str:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 gates its file store behind this
    for name in ("MLFLOW_EXPERIMENT_NAME", *BOUNDED):
        monkeypatch.delenv(name, raising=False)
    return f"file:{tmp_path / 'mlruns'}"


def test_mlflow_run_holds_params_metrics_per_step_and_the_winner(tracked, file_store, tmp_path):
    from mlflow.tracking import MlflowClient
    from safetensors.numpy import load_file

    run, records = tracked
    send(f"mlflow:{file_store}", run, records)
    client = MlflowClient(tracking_uri=file_store)
    experiment = client.get_experiment_by_name(run.spec.name)
    (logged,) = client.search_runs([experiment.experiment_id])
    assert logged.info.run_name == RUN and logged.info.status == "FINISHED"
    assert logged.data.tags["esgd.run"] == run.uri and logged.data.tags["esgd.mode"] == "esgd"
    assert logged.data.params == {k: str(v) for k, v in spec_params(run.spec).items()}
    K = run.spec.generations

    def history(name):
        return sorted((m.step, m.value) for m in client.get_metric_history(logged.info.run_id, name))

    for name in ("best", "elite_mean", "mean", "offspring_in_elite", "backoffs"):
        assert history(f"esgd/{name}")[:K] == [(r["generation"], float(r[name])) for r in records], name
    for family in ("sgd", "nesterov", "adam"):
        got = history(f"esgd/optimizer/{family}")[:K]
        assert got == [(r["generation"], r["optimizers"].get(family, 0.0)) for r in records]
    final = read_final(run.store, run.id)
    assert history("esgd/final/best_fitness") == [(K, final.best_fitness)]
    assert history("esgd/final/error_rate") == [(K, final.metric)]
    assert history("esgd/best")[K][0] == K  # the fine-tuned population
    assert logged.data.tags["esgd.best_member"] == final.best_member
    folder = client.download_artifacts(logged.info.run_id, "", str(tmp_path / "got"))
    weights = load_file(f"{folder}/winner/winner.safetensors")
    assert weights and f"name: {run.spec.name}" in open(f"{folder}/spec.yaml").read()
    assert "winner.json" in {a.path.rpartition("/")[2] for a in client.list_artifacts(logged.info.run_id, "winner")}
    assert not set(BOUNDED) & set(os.environ)  # MLflow's retries bounded while the tracker ran, not after


def test_a_resumed_run_goes_on_in_the_same_mlflow_run(tracked, file_store):
    from mlflow.tracking import MlflowClient

    run, records = tracked
    first = open_trackers([f"mlflow:{file_store}"])
    first.start(run.uri, run.spec)
    first.generation(records[0])
    first.close()  # stopped before its answer
    client = MlflowClient(tracking_uri=file_store)
    (stopped,) = client.search_runs([client.get_experiment_by_name(run.spec.name).experiment_id])
    assert stopped.info.status == "KILLED"
    extended = run.spec.model_copy(update={"generations": run.spec.generations + 2})
    with open_trackers([f"mlflow:{file_store}"]) as again:
        again.start(run.uri, extended)
        again.generation(records[1])
        again.finish(run)
    (resumed,) = client.search_runs([client.get_experiment_by_name(run.spec.name).experiment_id])
    assert resumed.info.run_id == stopped.info.run_id and resumed.info.status == "FINISHED"
    assert resumed.data.params["generations"] == str(run.spec.generations)  # MLflow keeps a param's first value
    assert resumed.data.tags["esgd.spec.generations"] == str(extended.generations)
    assert [m.step for m in client.get_metric_history(resumed.info.run_id, "esgd/mean")][:2] == [0, 1]


def test_an_unreachable_mlflow_server_warns_once_without_credentials(tracked, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run, records = tracked
    warnings = []
    trackers = open_trackers([f"mlflow:http://alice:s3cret@127.0.0.1:{port}"], warn=warnings.append)
    assert trackers[0].name == f"mlflow http://127.0.0.1:{port}"
    trackers.start(run.uri, run.spec)
    for record in records:
        trackers.generation(record)
    trackers.finish(run)
    trackers.close()
    assert len(warnings) == 1 and "s3cret" not in warnings[0] and "alice" not in warnings[0]
    assert warnings[0].startswith(f"tracking: mlflow http://127.0.0.1:{port} failed in start (")
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"  # the user's setting wins over BOUNDED's


def test_trackers_fan_out_and_the_observer_adds_the_optimizer_mix(tracked, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, records = tracked
    trackers = Trackers([TensorBoard(str(tmp_path / "a")), TensorBoard(str(tmp_path / "b"))])
    trackers.start(run.uri, run.spec)
    observe = trackers.observer(run)
    for g in range(run.spec.generations):
        observe(generation_summary(run, g))  # the driver's summary, without the mix
    trackers.close()
    for folder in ("a", "b"):
        events = EventAccumulator(str(tmp_path / folder / RUN), size_guidance={"scalars": 0})
        events.Reload()
        assert [e.value for e in events.Scalars("esgd/optimizer/adam")] == [
            f32(r["optimizers"].get("adam", 0.0)) for r in records
        ]
    Trackers().observer(run)(records[0])  # no trackers: nothing read, nothing done


# --- from the command line ------------------------------------------------------------------------


def test_esgd_run_track_logs_every_generation_and_refuses_a_bad_target_first(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from helpers import history, run_cli, write_spec

    spec = write_spec(tmp_path / "spec.yaml", small(generations=2))
    store = str(tmp_path / "store")
    code, _, err = run_cli(capsys, "run", spec, "--store", store, "--run-id", "cli", "--track", "wandb:x")
    assert code == 2 and err.strip().splitlines()[-1].startswith("esgd: error: ") and "wandb" in err
    assert not (tmp_path / "store" / "runs" / "cli").exists()  # refused before anything is written
    code, out, err = run_cli(
        capsys, "run", spec, "--store", store, "--run-id", "cli", "--track", f"tensorboard:{tmp_path}/tb"
    )
    assert code == 0, err
    events = EventAccumulator(str(tmp_path / "tb" / "cli"), size_guidance={"scalars": 0})
    events.Reload()
    rows = history(out)
    best = {g: f32(min(r["fitness"] for r in rows if r["generation"] == g and r["selected"])) for g in (0, 1)}
    logged = {e.step: e.value for e in events.Scalars("esgd/best")}
    assert {g: logged[g] for g in (0, 1)} == best  # each committed generation's best, as the history has it
