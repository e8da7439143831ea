"""Spec input the way users get it wrong (issue 13, items 5-7): broken YAML and --set values, keys
given twice, anchors and aliases (a billion-laughs bomb must not hang), the JSON schema against the
bundled examples, and the sanity limits."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import yaml

from esgd.cli.main import main
from esgd.core.spec import MAX_BATCH, MAX_COUNT, SpecError, dump_spec, load_spec, load_yaml, parse_spec, read_spec

ROOT = Path(__file__).resolve().parents[1]
ESGD = [sys.executable, "-c", "from esgd.cli.main import entry; entry()"]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml")) + sorted((ROOT / "examples" / "tiny").glob("*.yaml"))

BOMB = """\
task_args:
  a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
  d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
  e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
  f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
  g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
  h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
  i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def _cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(code, out, err, *needles):
    assert code == 2, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("esgd: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert out == ""
    return lines[0]


# --- item 5: YAML problems are one line, with where they are ---


def test_a_broken_set_value_is_one_line_naming_the_set_and_the_problem(capsys):
    line = _one_error_line(*_cli(capsys, "spec", "--set", "population.mu=[1,"), "--set population.mu=[1,", "column 4")
    assert "found '<stream end>'" in line


def test_a_yaml_error_in_a_spec_file_keeps_its_line_and_column(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text("name: x\npopulation:\n  mu: [1,\n")
    _one_error_line(*_cli(capsys, "spec", str(path)), f"spec {path}: not valid YAML: line 4, column 1: ")
    path.write_text('name: x\ntask_args:\n  data: "/tmp/x\n  hidden: 3\n')
    line = _one_error_line(*_cli(capsys, "spec", str(path)), "line 5, column 1: found unexpected end of stream")
    assert "started at line 3, column 9" in line, line  # where the unclosed quote began


def test_a_tab_or_a_bad_indent_names_its_line():
    with pytest.raises(SpecError, match=r"spec: not valid YAML: line 3, column 1"):
        load_spec("name: x\npopulation:\n\tmu: 3\n")


def test_a_control_character_names_its_line():
    with pytest.raises(SpecError, match=r"line 2, column 5: .*#x0007"):
        load_spec("seed: 1\nname\x07: x\n")


@pytest.mark.parametrize(
    ("text", "key", "where"),
    [
        ("seed: 1\nname: x\nseed: 2\n", "'seed'", "line 3 (first at line 1)"),
        ("population:\n  mu: 3\n  offspring: 2\n  mu: 4\n", "'mu'", "line 4 (first at line 2)"),
        ("task_args: {hidden: 3, hidden: 4}\n", "'hidden'", "line 1 (first at line 1)"),
    ],
)
def test_a_key_given_twice_is_an_error_naming_the_key_and_its_line(text, key, where):
    with pytest.raises(SpecError, match="duplicate key") as error:
        load_spec(text)
    assert key in str(error.value) and where in str(error.value), str(error.value)


def test_a_key_given_twice_in_a_file_names_the_file(tmp_path, capsys):
    path = tmp_path / "dup.yaml"
    path.write_text("seed: 1\nseed: 2\n")
    _one_error_line(*_cli(capsys, "spec", str(path)), str(path), "duplicate key 'seed'", "line 2")


def test_a_key_given_twice_in_a_set_value_is_an_error():
    with pytest.raises(SpecError, match=r"--set task_args=\{a: 1, a: 2\}: .*duplicate key 'a'"):
        load_spec("{}", ["task_args={a: 1, a: 2}"])


def test_anchors_and_aliases_are_refused():
    with pytest.raises(SpecError, match=r"line 2, column 6: anchors and aliases"):
        load_spec("task_args:\n  a: 1\n  b: *x\n".replace("1", "&x 1"))
    with pytest.raises(SpecError, match=r"--set task_args=\[&a 1, \*a\]: .*anchors and aliases"):
        load_spec("{}", ["task_args=[&a 1, *a]"])


def test_a_billion_laughs_in_task_args_is_refused_at_once(tmp_path, capsys):
    started = time.monotonic()
    with pytest.raises(SpecError, match="anchors and aliases"):
        load_spec(BOMB)
    assert time.monotonic() - started < 1
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    _one_error_line(*_cli(capsys, "spec", str(path)), str(path), "line 2", "anchors and aliases")


def test_a_billion_laughs_does_not_hang_the_cli(tmp_path):
    """End to end, in a process of its own so that a hang fails the test instead of stalling it."""
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    started = time.monotonic()
    try:
        done = subprocess.run([*ESGD, "spec", str(path)], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("esgd spec on a billion-laughs spec did not end within 60 s")
    assert time.monotonic() - started < 60
    assert done.returncode == 2 and "anchors and aliases" in done.stderr and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_deep_nesting_is_one_line_not_a_recursion_error():
    with pytest.raises(SpecError, match="nested more than"):
        load_spec("task_args: {x: " + "[" * 5000 + "]" * 5000 + "}")


def test_a_spec_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    _one_error_line(*_cli(capsys, "spec", str(path)), str(path), "UTF-8")


def test_load_yaml_is_the_strict_loader_for_other_files_too():
    """The settings file reads YAML the same way (one loader, one set of messages)."""
    assert load_yaml("a: [1, 2]\nb: {c: x}\n", "settings s.yaml") == {"a": [1, 2], "b": {"c": "x"}}
    with pytest.raises(SpecError, match=r"^settings s.yaml: duplicate key 'a' at line 2"):
        load_yaml("a: 1\na: 2\n", "settings s.yaml")


def test_dump_spec_never_writes_aliases():
    """The frozen spec is read back by the strict loader: shared objects are written out, twice."""
    shared = [1, 2, 3]
    spec = parse_spec({"task_args": {"a": shared, "b": shared}})
    text = dump_spec(spec)
    assert "&" not in text and "*" not in text
    assert load_spec(text) == spec


def test_a_set_key_with_an_empty_part_is_refused():
    with pytest.raises(SpecError, match=r"--set population\.\.mu=3: empty key"):
        load_spec("{}", ["population..mu=3"])


# --- item 6: the JSON schema accepts what the spec accepts ---


def _schema(capsys) -> dict:
    assert main(["spec", "--schema"]) == 0
    text = capsys.readouterr().out
    assert "\\u03c3" not in text and "σ" in text  # printed as σ, not escaped
    return json.loads(text)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT / "examples")))
def test_the_schema_accepts_every_bundled_example(path, capsys):
    validator = jsonschema.Draft202012Validator(_schema(capsys))
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
    assert not errors, errors
    load_spec(path.read_text())  # and the spec does too


def test_the_schema_accepts_every_form_of_a_range_and_refuses_what_the_spec_refuses(capsys):
    validator = jsonschema.Draft202012Validator(_schema(capsys))

    def both(lr) -> tuple[bool, bool]:
        data = {"sgd": {"optimizers": {"sgd": {"lr": lr}}}}
        try:
            parse_spec(data)
            spec_ok = True
        except SpecError:
            spec_ok = False
        return validator.is_valid(data), spec_ok

    for good in ([0.01, 0.1], {"low": 0.01, "high": 0.1}, 0.05, [1, 2]):
        assert both(good) == (True, True), good
    for bad in ([0.1], [0.1, 0.2, 0.3], "fast", {"low": 0.1}, {"low": 0.1, "high": 0.2, "mid": 1}, [-1, 1], True):
        assert both(bad) == (False, False), bad
    assert not validator.is_valid({"population": {"mu": MAX_COUNT + 1}})
    assert not validator.is_valid({"sgd": {"batch_size": [MAX_BATCH + 1]}})


def test_the_schema_prints_escaped_where_stdout_cannot_encode_it():
    """Valid JSON whatever the terminal: escaped (\\u03c3) only where stdout cannot encode σ."""
    done = subprocess.run(
        [*ESGD, "spec", "--schema"], capture_output=True, env={**os.environ, "PYTHONIOENCODING": "ascii"}
    )
    assert done.returncode == 0, done.stderr
    text = done.stdout.decode("ascii")
    assert "\\u03c3" in text and json.loads(text)["title"] == "RunSpec"


# --- item 7: sanity limits ---

LIMITS = [
    ("population.mu=1000000000", "population.mu"),
    (f"population.mu={MAX_COUNT + 1}", "population.mu"),
    ("population.offspring=100000", "population.offspring"),
    ("generations=1000000000000", "generations"),
    ("sgd.epochs=1000000", "sgd.epochs"),
    ("evolution.rounds=1000000", "evolution.rounds"),
    ("finetune.epochs=1000000", "finetune.epochs"),
    ("sgd.batch_size=[32, 1000000000000]", "sgd.batch_size.1"),
    (f"single.batch_size={MAX_BATCH + 1}", "single.batch_size"),
    ("finetune.batch_size=10000000", "finetune.batch_size"),
    ("sgd.batch_size=[0]", "sgd.batch_size.0"),
    ("pack.size=1000000", "pack.size"),
    ("seed=18446744073709551616", "seed"),  # 2**64: would draw what seed 0 draws
    ("sgd.optimizers.sgd.lr=[0.01, .inf]", "sgd.optimizers.sgd.lr.high"),
    ("sgd.optimizers.sgd.lr=.inf", "sgd.optimizers.sgd.lr.low"),
    ("sgd.optimizers.sgd.lr=[.nan, 0.1]", "sgd.optimizers.sgd.lr.low"),
    ("single.lr=.inf", "single.lr"),
    ("finetune.lr=.nan", "finetune.lr"),
    ("sgd.optimizers.adam={lr: [0.001, 0.01], weight_decay: [0, .inf]}", "sgd.optimizers.adam.weight_decay.high"),
    ("evolution.sigma={start: .inf, kind: constant}", "evolution.sigma.start"),
    ("evolution.sigma={start: 0.1, end: .nan, kind: linear}", "evolution.sigma.end"),
    ("sgd.lr_anneal={start: 1, end: .inf, kind: linear}", "sgd.lr_anneal.end"),
    ("evolution.roulette_floor=.inf", "evolution.roulette_floor"),
    ("population.init.sigma=.nan", "population.init.sigma"),
]


@pytest.mark.parametrize(("override", "field"), LIMITS, ids=[o for o, _ in LIMITS])
def test_values_beyond_the_sanity_limits_are_refused(override, field, capsys):
    line = _one_error_line(*_cli(capsys, "spec", "--set", override), f"error: {field}: ")
    if "inf" in override or "nan" in override:
        assert "finite" in line, line


def test_a_cap_error_says_it_is_a_sanity_limit(capsys):
    line = _one_error_line(*_cli(capsys, "spec", "--set", "population.mu=1000000000"), "population.mu")
    assert f"less than or equal to {MAX_COUNT}" in line and "sanity limit" in line and "docs/method.md" in line


def test_the_limits_themselves_are_accepted():
    spec = load_spec(
        "{}",
        [
            f"population.mu={MAX_COUNT}",
            f"population.offspring={MAX_COUNT}",
            f"generations={MAX_COUNT}",
            f"sgd.batch_size=[1, {MAX_BATCH}]",
            f"single.batch_size={MAX_BATCH}",
            f"seed={2**64 - 1}",
        ],
    )
    assert spec.population.mu == MAX_COUNT and spec.generations == MAX_COUNT and spec.sgd.batch_size[1] == MAX_BATCH


def test_every_example_keeps_its_run_id_and_stays_inside_the_limits():
    from esgd.controller.runs import default_run_id

    for path in EXAMPLES:
        spec = read_spec(str(path))
        assert load_spec(dump_spec(spec)) == spec
        assert default_run_id(spec).startswith(spec.name + "-")


@pytest.mark.parametrize(
    "override",
    [
        'population.init={checkpoint: "s3://AKIAXX:TopSecretPw@bucket/c.arrow"}',
        "task_args.data=s3://AKIAXX:Top/SecretPw@bucket/data",
    ],
)
def test_credentials_in_a_spec_uri_are_refused_without_echoing_them(override):
    """A URI with credentials anywhere in the spec (a checkpoint, task_args): one line naming the
    field, the secret never in it (the spec is stored, printed and compiled into Workflows)."""
    with pytest.raises(SpecError) as error:
        load_spec("name: x\n", [override])
    message = str(error.value)
    assert "credentials in a URI are not supported" in message and "\n" not in message
    assert "TopSecret" not in message and "AKIAXX" not in message
