"""The run spec: schema, documented fields, examples, overrides."""

import json
from pathlib import Path

import pytest

from esgd.cli.main import main
from esgd.core.spec import RunSpec, SpecError, load_spec

ROOT = Path(__file__).resolve().parents[1]


def test_schema_documents_every_field(capsys):
    assert main(["spec", "--schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "RunSpec"

    def walk(properties, where):
        for name, prop in properties.items():
            assert prop.get("description"), f"{where}.{name} has no description"

    walk(schema["properties"], "spec")
    for name, definition in schema["$defs"].items():
        walk(definition.get("properties", {}), name)


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("**/*.yaml")), ids=lambda p: p.name)
def test_every_example_is_a_valid_spec(path):
    assert isinstance(load_spec(path.read_text()), RunSpec)


def test_defaults_follow_the_paper():
    spec = load_spec("{}")
    assert spec.population.m == 5  # 60 % of µ = 8
    assert load_spec("population: {mu: 10}").population.m == 6
    assert spec.sgd.backoff == 1.0 and spec.mode == "esgd"
    assert set(spec.sgd.optimizers) == {"sgd", "nesterov", "adam"}


def test_defaults_that_differ_from_the_paper_are_the_measured_ones():
    """docs/KNOBS.md: the lr range not annealed, hyper-parameters kept, Ks = 5 with the back-off
    checked once per generation (the paper's: annealed, redrawn, Ks = 1, after every epoch)."""
    sgd = load_spec("{}").sgd
    assert (sgd.lr_anneal.end, sgd.hparams, sgd.epochs, sgd.patience) == (None, "keep", 5, "generation")


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("sgd.patience=-1", "sgd.patience: must be generation or a whole number from 0 to 10000, got -1"),
        ("sgd.patience=later", "sgd.patience: must be generation or a whole number from 0 to 10000, got 'later'"),
        ("sgd.patience=true", "sgd.patience: must be generation or a whole number from 0 to 10000, got True"),
        ("pack.size=0", "pack.size: must be auto or a whole number from 1 to 10000, got 0"),
        ("pack.size=foo", "pack.size: must be auto or a whole number from 1 to 10000, got 'foo'"),
    ],
)
def test_a_count_or_a_word_is_refused_in_one_line_naming_both(override, line, capsys):
    assert main(["spec", "--set", override]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"esgd: error: {line}"]


def test_overrides_are_parsed_as_yaml():
    spec = load_spec("{}", ["population.mu=12", "sgd.batch_size=[16, 32]", "mode=population", "pack.size=4"])
    assert spec.population.mu == 12 and spec.sgd.batch_size == [16, 32] and spec.mode == "population"
    assert spec.pack.size == 4
    with pytest.raises(SpecError, match="population.mu"):
        load_spec("{}", ["population.mu=0"])


def test_spec_command_prints_the_resolved_spec(capsys, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("population: {mu: 3, elite: 2}\n")
    assert main(["spec", str(path)]) == 0
    assert load_spec(capsys.readouterr().out).population.mu == 3


def test_hyper_parameters_and_families_are_named_alike_everywhere():
    """HParams is the one definition: the spec's ranges and fixed optimizers use its names, every
    family reads only its fields, and every family known to specs has a torch implementation."""
    from dataclasses import fields

    from esgd.core.hparams import DRAWN, FLOATS, HParams
    from esgd.core.optimizers import FAMILIES
    from esgd.core.spec import FixedOptimizer, OptimizerRange
    from esgd.worker.optimizers import IMPLEMENTATIONS

    assert DRAWN == tuple(OptimizerRange.model_fields) == FLOATS
    assert set(FixedOptimizer.model_fields) == {f.name for f in fields(HParams)}
    assert all(set(family.reads) <= set(FLOATS) for family in FAMILIES.values())
    assert set(IMPLEMENTATIONS) == set(FAMILIES) == {"sgd", "nesterov", "adam", "adamw", "rmsprop"}


def test_fields_added_later_keep_older_runs_ids_and_frozen_specs():
    """sgd.hparams, sgd.optimizer_state, sgd.patience and evolution.sigma_scale came after runs existed: a spec
    holding the value those runs had hashes to the id it had (the field left out of the hash), and
    a frozen spec without the field loads with that value, whatever today's default is; every dump
    names the field, so a frozen spec loads back as it was."""
    from esgd.core.spec import ADDED, dump_spec, identity_text, load_frozen, parse_spec

    older = parse_spec(
        {
            "sgd": {"hparams": "redraw", "optimizer_state": "reset", "patience": 0},
            "evolution": {"sigma_scale": "absolute"},
        }
    )
    chosen = parse_spec(
        {"sgd": {"hparams": "keep", "optimizer_state": "carry", "patience": 2}, "evolution": {"sigma_scale": "rms"}}
    )
    for section, name in ADDED:
        assert f"{name}:" not in identity_text(older) and f"{name}:" in dump_spec(older)
        assert f"{name}: {getattr(getattr(chosen, section), name)}" in identity_text(chosen)
    assert load_frozen(dump_spec(older), "spec.yaml") == older and load_frozen(dump_spec(chosen), "x") == chosen
    assert load_frozen(identity_text(older), "spec.yaml") == older  # frozen before the fields existed


def test_the_default_run_id_of_a_spec_does_not_change():
    """`esgd run SPEC` resumes the run of the same spec by its default id (name plus a hash of the
    resolved spec): a new spec field must not change the ids of specs that do not use it. digits.yaml
    as it was before sgd.hparams existed (the paper's lr annealing, redrawn hyper-parameters, K = 12
    generations of one epoch, back-off after every epoch) keeps
    its id; today's digits.yaml is another spec."""
    from esgd.controller.runs import default_run_id
    from esgd.core.spec import read_spec

    digits = str(ROOT / "examples" / "digits.yaml")
    assert default_run_id(read_spec(digits)) == "digits-c2856387"
    before = ["sgd.lr_anneal.end=0.2", "sgd.hparams=redraw", "generations=12", "sgd.epochs=1", "sgd.patience=0"]
    assert default_run_id(read_spec(digits, before)) == "digits-b0ef55a4"
    named = [
        "evolution.parents=roulette",
        "sgd.optimizer_state=reset",
        "sgd.patience=0",
        "evolution.sigma_scale=absolute",
    ]
    assert default_run_id(read_spec(digits, [*before, *named])) == "digits-b0ef55a4"  # defaults, named
    for change in ("sgd.hparams=keep", "sgd.optimizer_state=carry", "sgd.patience=1", "evolution.sigma_scale=rms"):
        assert default_run_id(read_spec(digits, [*before, change])) != "digits-b0ef55a4"
