"""Experiment configs: compose base + model + training files + dotted overrides with the fit CLI's own parser."""

from __future__ import annotations

import dataclasses
import functools
from argparse import ArgumentError
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import Namespace

from lit_tuning.files import atomic_write
from lit_tuning.mappings import flatten, plain
from lit_tuning.paths import BASE_CONFIG, UnsafeNameError
from lit_tuning.paths import safe_name as _safe_name
from lit_tuning.train.base_model import check_model_reference
from lit_tuning.train.checks import check_fit_config
from lit_tuning.train.cli import LitTuningCLI, LitTuningParser, cli_kwargs
from lit_tuning.train.problems import ArgumentProblem
from lit_tuning.train.yaml_files import DuplicateKeyError, load_yaml, one_line

# The one argument link of LitTuningCLI.add_arguments_to_parser: the tokenizer comes with the model.
LINKED_KEYS = {"data.model_name_or_path": "model.model_name_or_path"}


class ConfigError(ValueError):
    """A config the fit CLI refuses; the message names the key, where it was set, and what is allowed."""


@dataclasses.dataclass(frozen=True)
class Experiment:
    """An experiment as `fit` sees it: config files (later files win) plus dotted overrides (win over every file)."""

    files: tuple[str, ...] = (BASE_CONFIG,)
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)

    def cli_args(self) -> list[str]:
        """Return the `fit` arguments that compose this experiment, in the order the CLI applies them."""
        args = [arg for path in self.files for arg in ("--config", str(path))]
        return args + [override_arg(key, value) for key, value in self.overrides.items()]

    def with_overrides(self, overrides: dict[str, Any]) -> Experiment:
        """Return this experiment with more dotted overrides (the new ones win)."""
        return Experiment(self.files, {**self.overrides, **overrides})


@dataclasses.dataclass(frozen=True)
class ResolvedConfig:
    """A parsed and validated experiment: the full `fit` config and where each value came from."""

    experiment: Experiment
    namespace: Namespace
    sources: dict[str, str]  # dotted key -> config file path, "override", "default" or "linked from <key>"

    def __getitem__(self, key: str) -> Any:
        """Return the resolved value of a dotted key."""
        return self.namespace[key]

    def to_dict(self) -> dict[str, Any]:
        """Return the config as plain nested data, exactly what save_config writes."""
        return yaml.safe_load(dump_config(self, "yaml"))


class _ParserBuilt(Exception):
    """Carries the constructed CLI out of LightningCLI.__init__ before anything is parsed."""


class _ParserOnlyCLI(LitTuningCLI):
    """LitTuningCLI that stops right after building its parsers: the same parser as `fit`, without running anything."""

    def parse_arguments(self, parser: LitTuningParser, args: Any) -> None:
        """Stop construction here, handing the built CLI to fit_parser."""
        raise _ParserBuilt(self)


@functools.cache
def fit_parser() -> LitTuningParser:
    """Return the parser of `python -m lit_tuning fit` (built once per process), raising errors instead of exiting."""
    try:
        _ParserOnlyCLI(args=[], run=True, **cli_kwargs())
    except _ParserBuilt as built:
        parser = built.args[0]._subcommand_parsers["fit"]
    parser.exit_on_error = False
    return parser


def format_value(value: Any) -> str:
    """Format a value for a `--key=value` argument the way the CLI's YAML parser reads it back (1e-4 stays a float)."""
    text = yaml.safe_dump(plain(value), default_flow_style=True, width=1_000_000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def override_arg(key: str, value: Any) -> str:
    """Return the `fit` argument that sets a dotted key, e.g. `--model.lora_r=8`."""
    return f"--{key}={format_value(value)}"


def parse_args(args: list[str], namespace: Namespace | None = None) -> Namespace:
    """Parse `fit` arguments (over an already parsed namespace if given); raise ConfigError with the CLI's message."""
    LitTuningParser.invoked(args)  # lets the parser's error say which file or override set the bad key
    try:
        return fit_parser().parse_args(args, namespace=namespace.clone() if namespace is not None else None)
    except ArgumentError as error:
        raise ConfigError(_dedent_message(str(error))) from None


def compose(experiment: Experiment) -> ResolvedConfig:
    """Compose and validate an experiment exactly as `fit` would, without loading a model or writing anything."""
    for path in experiment.files:
        if not Path(path).is_file():
            raise ConfigError(f"config file {path} does not exist; allowed: an existing YAML or JSON file")
    namespace = check_config(parse_args(experiment.cli_args()))
    return ResolvedConfig(experiment, namespace, value_sources(experiment, namespace))


def apply_overrides(resolved: ResolvedConfig, overrides: dict[str, Any]) -> ResolvedConfig:
    """Return a composed config with more overrides, parsed over it: what compose gives, without re-reading files."""
    args = [override_arg(key, value) for key, value in overrides.items()]
    namespace = check_config(parse_args(args, resolved.namespace))
    sources = {**resolved.sources, **dict.fromkeys(overrides, "override")}
    return ResolvedConfig(resolved.experiment.with_overrides(overrides), namespace, sources)


def check_config(namespace: Namespace, *, this_machine: bool = False) -> Namespace:
    """Apply fit's own checks before it builds anything (as before_instantiate_classes does); return the config.

    this_machine: also check this machine's accelerator and devices (the sweep does: its trials run here).
    """
    error = check_model_reference(namespace.model.model_name_or_path)
    if error:
        raise ConfigError(f'Parser key "model.model_name_or_path":\n  {error}')
    try:
        check_fit_config(namespace, this_machine=this_machine)
    except ArgumentProblem as problem:
        raise ConfigError(f'Parser key "{problem.key}":\n  {problem.reason}') from None
    return namespace


def value_sources(experiment: Experiment, namespace: Namespace) -> dict[str, str]:
    """Map each resolved dotted key to what set it: the last file setting it, an override, a link, or the default."""
    file_keys = [(str(path), set(flatten(yaml.safe_load(Path(path).read_text())))) for path in experiment.files]
    sources = {}
    for key, _ in namespace.items(branches=False):
        if key == "config":
            continue
        sources[key] = "default"
        for path, keys in file_keys:
            if any(key == set_key or key.startswith(set_key + ".") for set_key in keys):
                sources[key] = path
        if key in experiment.overrides:
            sources[key] = "override"
        if key in LINKED_KEYS:
            sources[key] = f"linked from {LINKED_KEYS[key]}"
    return sources


def dump_config(resolved: ResolvedConfig, fmt: str) -> str:
    """Serialize the full resolved config as `yaml` or `json`, keeping nulls so that nothing falls back to a default."""
    namespace = resolved.namespace.clone()
    del namespace["config"]  # the composition is inlined; re-reading the files would be redundant
    return fit_parser().dump(namespace, format=fmt, skip_unset=False)


def save_config(resolved: ResolvedConfig, path: str | Path) -> Path:
    """Write the resolved config to a .yaml/.yml/.json file atomically; `fit --config path` reproduces it."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json"):
        raise ConfigError(f"config file {path}: suffix {suffix!r} is not supported; allowed: .yaml, .yml, .json")
    if suffix == ".json":
        text = dump_config(resolved, "json_indented")
    else:
        text = composition_header(resolved.experiment) + dump_config(resolved, "yaml")
    return atomic_write(path, text)


def composition_header(experiment: Experiment) -> str:
    """Return YAML comment lines saying which files and overrides a config was composed from."""
    lines = [f"# composed from: {' + '.join(experiment.files)}"]
    lines += [f"#   override: {override_arg(key, value)}" for key, value in experiment.overrides.items()]
    return "\n".join(lines) + "\n"


def safe_name(name: str) -> str:
    """Turn an experiment name into a file and run-directory name, or raise ConfigError naming it."""
    try:
        return _safe_name(name)
    except UnsafeNameError as error:
        raise ConfigError(f"experiment {error}") from None


def _dedent_message(message: str) -> str:
    """Drop lines the parser repeats when it reports through both the main and the subcommand parser."""
    lines = []
    for line in message.splitlines():
        if line not in lines:
            lines.append(line)
    return "\n".join(lines)


def read_yaml(path: str | Path) -> Any:
    """Read a YAML file with fit's strict reader (duplicate keys refused), raising ConfigError naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ConfigError(f"{path}: cannot read it ({reason}); allowed: a readable YAML file") from None
    try:
        return load_yaml(text)
    except DuplicateKeyError as error:
        raise ConfigError(f"{path}: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {one_line(error)}") from None
