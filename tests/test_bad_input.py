"""Generated bad input: configs, search spaces and sweep arguments are refused with one line, nothing written."""

from __future__ import annotations

import hashlib
import inspect
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lit_tuning.experiment.config import ConfigError, Experiment, compose
from lit_tuning.sweep.cli import main as sweep_main
from lit_tuning.train.metrics import METRICS
from lit_tuning.train.module import LoRAModule

MODEL_KEYS = set(inspect.signature(LoRAModule.__init__).parameters)

REPO = Path(__file__).resolve().parents[1]
# The everyday suite runs 205 generated examples in all (~1-2 min on 2 cores); LIT_TUNING_BAD_INPUT_SCALE=3
# (the slow variant below) runs three times as many.
settings.register_profile(
    "bad-input",
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SCALE = float(os.environ.get("LIT_TUNING_BAD_INPUT_SCALE", "1"))
BASE = {
    "trainer": {"max_steps": 10, "val_check_interval": 5, "enable_progress_bar": False},
    "model": {"model_name_or_path": "embedded:micro"},
    "data": {"num_words": 300},
}


def examples(count: int):
    """Hypothesis settings of one test: `count` examples (times the scale), the shared profile otherwise."""
    return settings(settings.get_profile("bad-input"), max_examples=max(1, round(count * SCALE)))


def tree_digest(root: Path) -> str:
    """Hash every path, mode and byte under root: equal digests mean nothing was written, moved or removed."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode() + oct(path.stat().st_mode).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working folder holding the project's base config and a small variant of it."""
    root = tmp_path_factory.mktemp("bad-input")
    shutil.copytree(REPO / "configs", root / "configs")
    (root / "small.yaml").write_text(yaml.safe_dump(BASE))
    return root


@pytest.fixture
def in_workdir(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(workdir)
    return workdir


def write(root: Path, text: str) -> Path:
    """Write a file into a scratch folder beside the work tree (the tree itself must stay as it was)."""
    scratch = root.parent / f"{root.name}-inputs"
    scratch.mkdir(exist_ok=True)
    path = scratch / f"input-{hashlib.sha1(text.encode()).hexdigest()[:12]}.yaml"
    path.write_text(text)
    return path


def nested(key: str, value: object) -> dict:
    document: dict = {}
    node = document
    *sections, leaf = key.split(".")
    for section in sections:
        node = node.setdefault(section, {})
    node[leaf] = value
    return document


# Values of the right type (or none) that cannot work, per key: each is refused, naming the key.
non_finite = st.sampled_from([math.inf, -math.inf, math.nan])
wrong_type = st.one_of(
    st.text(min_size=1, max_size=8).filter(lambda t: not _is_number_text(t)),
    st.lists(st.integers(), min_size=1, max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), min_size=1, max_size=2),
)
BAD_VALUES = {
    "model.learning_rate": st.one_of(non_finite, st.floats(max_value=0), wrong_type),
    "model.lora_alpha": st.one_of(non_finite, st.floats(max_value=0), wrong_type),
    "model.weight_decay": st.one_of(non_finite, st.floats(max_value=-1e-9), wrong_type),
    "model.lora_dropout": st.one_of(non_finite, st.floats(min_value=1), st.floats(max_value=-1e-9)),
    "model.lora_r": st.one_of(
        st.integers(max_value=0),
        st.floats(allow_nan=True).filter(lambda v: v != int(v) if math.isfinite(v) else True),
        wrong_type,
    ),
    "model.target_modules": st.lists(
        st.text("abcxyz_", min_size=1, max_size=6).map(lambda t: "zz" + t), min_size=1, max_size=3
    ),
    "trainer.max_steps": st.one_of(st.integers(max_value=-2), st.just(0), wrong_type),
    "trainer.accumulate_grad_batches": st.one_of(st.integers(max_value=0), wrong_type),
    "trainer.gradient_clip_val": st.one_of(non_finite, st.floats(max_value=-1e-9)),
    "trainer.val_check_interval": st.one_of(
        st.integers(min_value=11, max_value=10**12),
        st.integers(max_value=0),
        st.floats(min_value=1.0001, max_value=1e300),
        non_finite,
    ),
    "trainer.log_every_n_steps": st.integers(max_value=0),
    "data.val_fraction": st.one_of(
        non_finite, st.floats(min_value=1.0001), st.floats(max_value=-1e-9), st.floats(min_value=0.9, max_value=1.0)
    ),
    "data.min_word_length": st.one_of(st.integers(min_value=9, max_value=10**6), st.integers(max_value=0)),
    "data.num_words": st.one_of(st.integers(max_value=0), st.integers(min_value=10**7, max_value=10**18)),
    "data.prompt": st.text(max_size=20).filter(lambda t: "{position}" not in t or "{word}" not in t),
    "ckpt_path": st.text("abc/._-é", min_size=1, max_size=12).map(lambda t: f"missing-{t}.ckpt"),
}


def _is_number_text(text: str) -> bool:
    try:
        float(yaml.safe_load(text) if text.strip() else "x")
    except (TypeError, ValueError, yaml.YAMLError):
        return False
    return True


def assert_refused(error: BaseException, *names: str) -> None:
    """The refusal names one of `names` (the key, or the file), and fits the one-reason format."""
    message = str(error)
    assert any(name in message for name in names), message
    assert "Traceback" not in message


@examples(70)
@given(data=st.data())
def test_generated_bad_config_values_are_refused_naming_the_key(in_workdir: Path, data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sorted(BAD_VALUES)), label="key")
    value = data.draw(BAD_VALUES[key], label="value")
    path = write(in_workdir, yaml.safe_dump(nested(key, value), allow_unicode=True))
    before = tree_digest(in_workdir)
    with pytest.raises(ConfigError) as refused:
        compose(Experiment(("configs/base.yaml", "small.yaml", str(path))))
    assert_refused(refused.value, key, str(path))
    assert tree_digest(in_workdir) == before


unknown_key = st.from_regex(r"\A(model|data|trainer)\.[a-z_é/]{1,10}\Z").filter(
    lambda key: key.split(".")[1] not in {"model", "data", "trainer"}
)


@examples(20)
@given(key=unknown_key, value=st.integers())
def test_generated_unknown_keys_are_refused_naming_them(in_workdir: Path, key: str, value: int) -> None:
    from lit_tuning.experiment.config import fit_parser

    if key in fit_parser().get_defaults():
        return  # a real key: not bad input
    path = write(in_workdir, yaml.safe_dump(nested(key, value), allow_unicode=True))
    before = tree_digest(in_workdir)
    with pytest.raises(ConfigError) as refused:
        compose(Experiment(("configs/base.yaml", "small.yaml", str(path))))
    assert_refused(refused.value, key.split(".")[1], str(path))
    assert tree_digest(in_workdir) == before


# Config files that are not a mapping of keys: YAML lists and scalars, malformed YAML, a key set twice.
scalars = st.one_of(st.integers(), st.floats(allow_nan=False), st.text(min_size=1, max_size=10), st.booleans())
non_mapping = (
    st.one_of(st.lists(scalars, min_size=1, max_size=4), scalars)
    .map(lambda doc: yaml.safe_dump(doc, allow_unicode=True))
    .filter(lambda text: not isinstance(yaml.safe_load(text), dict) and yaml.safe_load(text) is not None)
)
malformed = (
    st.sampled_from(["model: [1", "model: {lora_r: 4", "a: b: c", "- a\nb: 1", "model:\n\tlora_r: 4", '"open'])
    .flatmap(lambda text: st.text("xyz :[]{}", max_size=6).map(lambda tail: text + tail))
    .filter(lambda text: _not_loadable(text))
)
duplicated = st.sampled_from(sorted(BAD_VALUES)).map(
    lambda key: f"{key.split('.')[0]}:\n  x: 1\n  x: 2\n" if "." in key else f"{key}: 1\n{key}: 2\n"
)


def _not_loadable(text: str) -> bool:
    try:
        yaml.safe_load(text)
    except yaml.YAMLError:
        return True
    return False


@examples(35)
@given(text=st.one_of(non_mapping, malformed, duplicated))
def test_generated_broken_config_files_are_refused_naming_the_file(in_workdir: Path, text: str) -> None:
    path = write(in_workdir, text)
    before = tree_digest(in_workdir)
    with pytest.raises(ConfigError) as refused:
        compose(Experiment(("configs/base.yaml", str(path))))
    assert_refused(refused.value, f"config file {path}")
    assert len(str(refused.value).splitlines()) == 1
    assert tree_digest(in_workdir) == before


# Search spaces: each document is broken in one generated way; the sweep exits 2 before anything is written.
GOOD_PARAMETER = {"model.lora_r": {"candidates": [4, 8]}}
space_breakers = {
    "parameter range": st.fixed_dictionaries(
        {
            "low": st.one_of(non_finite, st.integers(min_value=5)),
            "high": st.one_of(non_finite, st.integers(max_value=4)),
        }
    ).map(lambda spec: {"parameters": {"model.lora_r": spec}}),
    "parameter key": st.text(min_size=1, max_size=12)
    .filter(lambda key: key not in MODEL_KEYS)
    .map(lambda key: {"parameters": {f"model.{key}": {"candidates": [1, 2]}}}),
    "candidate value": st.one_of(non_finite, st.integers(max_value=0), wrong_type).map(
        lambda value: {"parameters": {"model.lora_r": {"candidates": [value]}}}
    ),
    "objective": st.one_of(
        st.sampled_from(["test/loss", "test/letter_position_accuracy", "model/trainable_params"]),
        st.text(max_size=10).filter(lambda name: name not in METRICS),
    ).map(lambda metric: {"objective": {"metric": metric}}),
    "unknown field": st.text("abcdé/", min_size=1, max_size=8).map(lambda field: {f"x{field}": 1}),
    "name": st.text(min_size=1, max_size=10)
    .filter(lambda name: "/" in name or not name.isascii() or name.startswith("."))
    .map(lambda name: {"name": name}),
    "n_trials": st.one_of(st.integers(max_value=0), non_finite, wrong_type).map(lambda n: {"n_trials": n}),
    "huge grid": st.integers(min_value=12, max_value=40).map(
        lambda axis: {
            "strategy": "grid",
            "n_trials": None,
            "parameters": {
                key: {"low": 1, "high": axis, "step": 1}
                for key in (
                    "model.lora_r",
                    "model.warmup_steps",
                    "data.batch_size",
                    "data.split_seed",
                    "trainer.log_every_n_steps",
                )
            },
        }
    ),
}


@examples(35)
@given(data=st.data())
def test_generated_bad_search_spaces_exit_2_naming_the_file(in_workdir: Path, data: st.DataObject, capsys) -> None:
    kind = data.draw(st.sampled_from(sorted(space_breakers)), label="kind")
    change = data.draw(space_breakers[kind], label="change")
    document = {"strategy": "random", "n_trials": 2, "base": {"configs": ["configs/base.yaml", "small.yaml"]}}
    document["parameters"] = dict(GOOD_PARAMETER)
    document.update(change)
    path = write(in_workdir, yaml.safe_dump({k: v for k, v in document.items() if v is not None}, allow_unicode=True))
    before = tree_digest(in_workdir)
    capsys.readouterr()
    # --devices=none-such: were the space valid after all, the sweep would stop at planning, naming no file.
    assert sweep_main([f"--search-space={path}", "--devices=none-such"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert str(path) in err, err
    assert tree_digest(in_workdir) == before


# Sweep numbers: every flag refuses zero, negative, non-finite, non-numeric and absurdly large values.
NUMBER_FLAGS = ("--n-trials", "--workers", "--workers-per-gpu", "--timeout", "--heartbeat", "--top-k", "--max-failures")
bad_number = st.one_of(
    st.integers(max_value=0),
    st.integers(min_value=10**7),
    st.sampled_from(["inf", "-inf", "nan", "two", "1e400", "0.0", "[1]", "{a: 1}", "2.5", "true"]),
    st.text(min_size=1, max_size=6).filter(lambda text: not any(char.isdigit() for char in text)),
)


@examples(45)
@given(flag=st.sampled_from(NUMBER_FLAGS), value=bad_number)
def test_generated_bad_sweep_numbers_exit_2_naming_the_flag(in_workdir: Path, flag: str, value: object, capsys) -> None:
    assume(not _acceptable(flag, str(value)))
    before = tree_digest(in_workdir)
    capsys.readouterr()
    # --search-space=missing: were the value accepted after all, the sweep would stop there, naming no flag.
    assert sweep_main([f"{flag}={value}", "--search-space=missing.yaml"]) == 2
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert tree_digest(in_workdir) == before


def _acceptable(flag: str, text: str) -> bool:
    """Whether a generated value is in fact valid for the flag (YAML null means the default)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return False
    if value is None:
        return True
    if flag == "--timeout":
        return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1_000_000


def good_space(root: Path) -> Path:
    """A valid two-trial random search space over the small base config."""
    document = {"strategy": "random", "n_trials": 2, "base": {"configs": ["configs/base.yaml", "small.yaml"]}}
    return write(root, yaml.safe_dump({**document, "parameters": GOOD_PARAMETER}))


def test_bad_fit_arguments_after_dashes_are_refused_once_before_any_trial(in_workdir: Path, capsys) -> None:
    space = good_space(in_workdir)
    before = tree_digest(in_workdir)
    assert sweep_main([f"--search-space={space}", "--workers=1", "--", "--model.learning_rate=inf"]) == 2
    err = capsys.readouterr().err
    assert "model.learning_rate" in err and "after --" in err, err
    assert tree_digest(in_workdir) == before


def test_a_storage_file_that_is_not_a_database_is_refused(in_workdir: Path, capsys) -> None:
    space = good_space(in_workdir)
    notes = write(in_workdir, "these are notes, not a database\n")
    before = tree_digest(in_workdir), notes.read_bytes()
    assert sweep_main([f"--search-space={space}", "--workers=1", f"--storage=sqlite:///{notes}"]) == 2
    err = capsys.readouterr().err
    assert "not a database" in err and "--storage" in err, err
    assert (tree_digest(in_workdir), notes.read_bytes()) == before


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (
            [
                "lit_tuning",
                "fit",
                "--config",
                "configs/base.yaml",
                "--config",
                "small.yaml",
                "--trainer.max_epochs=-1",
                "--trainer.max_steps=-1",
            ],
            'Parser key "trainer.max_steps"',
        ),
        (["lit_tuning.sweep", "--workers", "0"], "--workers = '0'"),
    ],
    ids=["fit-never-ends", "sweep-zero-workers"],
)
def test_real_commands_exit_2_with_one_error_and_write_nothing(
    workdir: Path, command: list[str], expected: str
) -> None:
    before = tree_digest(workdir)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", *command], cwd=workdir, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert tree_digest(workdir) == before


@pytest.mark.slow
def test_three_times_more_generated_bad_input() -> None:
    env = {**os.environ, "LIT_TUNING_BAD_INPUT_SCALE": "3", "PYTHONPATH": str(REPO)}
    # -m "not slow": this test's own name matches -k generated, and must not run itself again
    done = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-m", "not slow", "-k", "generated"],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert done.returncode == 0, done.stdout[-4000:]
