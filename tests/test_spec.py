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


def test_the_default_run_id_of_a_spec_does_not_change():
    """`esgd run SPEC` resumes the run of the same spec by its default id (name plus a hash of the
    resolved spec): a new spec field must not change the ids of specs that do not use it."""
    from esgd.controller.runs import default_run_id
    from esgd.core.spec import read_spec

    assert default_run_id(read_spec(str(ROOT / "examples" / "digits.yaml"))) == "digits-b0ef55a4"
    chosen = read_spec(str(ROOT / "examples" / "digits.yaml"), ["evolution.parents=roulette"])
    assert default_run_id(chosen) == "digits-b0ef55a4"  # the default, named: the same spec
