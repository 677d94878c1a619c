"""The LightningCLI of lit_tuning: one run directory per invocation, linked arguments, checks before any work."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, NoReturn

import yaml
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only

from lit_tuning.paths import RUNS_ROOT, SAFE_NAME
from lit_tuning.tracking import TrackingCallback, TrackingSettings, build_trackers, close_open_trackers
from lit_tuning.train.base_model import check_model_reference
from lit_tuning.train.checks import check_fit_config
from lit_tuning.train.data import SpellingDataModule
from lit_tuning.train.metrics import PRIMARY_METRIC
from lit_tuning.train.module import LoRAModule
from lit_tuning.train.problems import ArgumentProblem
from lit_tuning.train.yaml_files import PARSER_MODE, file_problem, load_yaml

KEY_IN_ERROR = re.compile(r'Parser key "([^"]+)"|accept option \'([^\']+)\'|unrecognized arguments: --(\S+)')
UNKNOWN_KEY = re.compile(r"accept option '([^']+)'|unrecognized arguments: --(\S+)")


class LitTuningParser(LightningArgumentParser):
    """A LightningArgumentParser whose errors also say which config file (or the command line) set the bad key."""

    argv: ClassVar[list[str]] = []  # the arguments of the current invocation, set by invoked()
    # jsonargparse parses a config file from inside its folder, so a relative --config path is read from here.
    workdir: ClassVar[Path] = Path.cwd()

    @classmethod
    def invoked(cls, argv: list[str]) -> None:
        """Record the arguments about to be parsed, and the folder they are relative to, for error messages."""
        cls.argv, cls.workdir = argv, Path.cwd()

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        """Exit 2 with one line: the message plus where the offending key came from (a broken config file alone)."""
        paths = [str(self.workdir / path) for path in config_files(self.argv)]
        problem = next(filter(None, map(file_problem, paths)), None)
        sources = describe_key_sources(message, self.argv, self.workdir)
        full = problem or message + sources + self._allowed_keys_hint(message)
        if not self.exit_on_error:  # a caller that handles the error itself
            super().error(full, ex)
        self._logger.error(full)
        sys.stderr.write(f"error: {one_line(full)} (all keys: python -m lit_tuning fit --help)\n")
        self.exit(2)

    def _allowed_keys_hint(self, message: str) -> str:
        """For an unknown key, list the keys its section does accept."""
        match = UNKNOWN_KEY.search(message)
        if not match:
            return ""
        section, _, _ = (match.group(1) or match.group(2)).rpartition(".")
        # The main parser reports unknown keys of a subcommand: look in the subcommands' parsers too.
        subcommands = getattr(getattr(self, "_subcommands_action", None), "_name_parser_map", {})
        try:
            roots = [parser.get_defaults().as_dict() for parser in (self, *subcommands.values())]
        except Exception:  # the hint is a courtesy; the error itself must still be reported
            return ""
        for root in roots:
            node = root
            for part in section.split(".") if section else []:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and node:
                return f"\n  allowed keys{' under ' + section if section else ''}: {', '.join(sorted(node))}"
        return ""


# Lines of jsonargparse's union-type report that repeat what the other lines say.
REDUNDANT_LINE = re.compile(
    r"^(Does not validate against any of the Union subtypes|Subtypes: .*|Errors:"
    r"|Given value type: .*|- Expected a <class 'NoneType'>)$"
)


def one_line(message: str) -> str:
    """Join a multi-line parser message into one line, without the lines that only repeat the others."""
    lines = [line.strip() for line in message.splitlines()]
    head, *rest = [line.removeprefix("- ") for line in lines if line and not REDUNDANT_LINE.match(line)] or [""]
    return head + " " + "; ".join(rest) if head.endswith(":") else "; ".join([head, *rest])


class LitTuningCLI(LightningCLI):
    """LightningCLI for LoRA spelling fine-tunes; each invocation writes into its own run directory."""

    def __init__(self, *args: Any, extra_callbacks: Sequence[Callback] = (), **kwargs: Any) -> None:
        self.extra_callbacks = list(extra_callbacks)  # set first: the base __init__ runs the whole subcommand
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add the run name and tie the data's tokenizer to the model."""
        parser.add_argument(
            "--run_name",
            type=str | None,
            default=None,
            help="Name of the run directory under trainer.default_root_dir (default: <subcommand>-<timestamp>).",
        )
        parser.add_class_arguments(TrackingSettings, "tracking")
        parser.link_arguments("model.model_name_or_path", "data.model_name_or_path")
        parser.set_defaults({"trainer.default_root_dir": RUNS_ROOT.as_posix()})

    def before_instantiate_classes(self) -> None:
        """Refuse values that cannot work or a run directory that exists, before anything is built or written."""
        config = self.config[self.subcommand]
        error = check_model_reference(config.model.model_name_or_path)
        if error:
            self.parser.error(f'Parser key "model.model_name_or_path": {error}')
        try:
            check_fit_config(config)
        except ArgumentProblem as problem:
            self.parser.error(str(problem))
        if config.run_name is not None and not SAFE_NAME.fullmatch(config.run_name):
            self.parser.error(
                f'Parser key "run_name": {config.run_name!r} is not a safe directory name; '
                "allowed: letters, digits, '.', '_' and '-', not starting with '.'"
            )
        self.run_dir = choose_run_dir(Path(config.trainer.default_root_dir), config.run_name, self.subcommand)
        if config.run_name is not None and (self.run_dir / "config.yaml").exists():
            self.parser.error(
                f'Parser key "run_name": run directory {self.run_dir} already holds a run; choose another run_name'
            )

    def instantiate_classes(self) -> None:
        """Build model, data and trainer; a value the classes refuse exits like a parser error (no traceback)."""
        try:
            super().instantiate_classes()
        except ArgumentProblem as problem:
            self.parser.error(str(problem))

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Point the trainer at this invocation's run directory and attach the CSV, MLflow and W&B loggers."""
        trainer_config = self._get(self.config_init, "trainer", default={})
        kwargs.setdefault("default_root_dir", str(self.run_dir))
        settings: TrackingSettings = self._get(self.config_init, "tracking")
        if trainer_config.get("logger") in (None, True) and rank_zero_only.rank != 0:
            # A DDP rank > 0 (started by Lightning with its rank in the environment) logs nothing: opening tracker
            # runs here would leave orphan RUNNING runs and overwrite rank 0's tracking.json.
            kwargs.setdefault("logger", [CSVLogger(save_dir=str(self.run_dir), name="", version="")])
        elif trainer_config.get("logger") in (None, True):
            resolved = yaml.safe_load(self._parser(self.subcommand).dump(self.config[self.subcommand], skip_none=False))
            resolved.pop("config", None)
            trackers = build_trackers(
                settings,
                run_dir=self.run_dir,
                job_type=self.subcommand,
                config=resolved,
                accelerator=str(trainer_config.get("accelerator", "auto")),
                metric=PRIMARY_METRIC,
            )
            kwargs.setdefault("logger", [CSVLogger(save_dir=str(self.run_dir), name="", version=""), *trackers])
        self.trainer_defaults["callbacks"] = [
            AdapterExport(self.run_dir),
            TrackingCallback(self.run_dir, settings),
            *self.extra_callbacks,
        ]
        return super().instantiate_trainer(**kwargs)

    def after_fit(self) -> None:
        """Say where the run went and how to evaluate it."""
        if not self.trainer.is_global_zero:
            return
        print(f"\nRun saved in {self.run_dir}\n  adapter: {self.run_dir / 'adapter'}")
        checkpoint = self.trainer.checkpoint_callback
        if checkpoint is not None and checkpoint.last_model_path:
            config_path = self.run_dir / "config.yaml"
            evaluate = f"python -m lit_tuning test --config {config_path} --ckpt_path {checkpoint.last_model_path}"
            print(f"  evaluate: {evaluate}")


class AdapterExport(Callback):
    """Saves the PEFT adapter and the tokenizer into <run_dir>/adapter when fitting ends."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write adapter/ with save_pretrained (rank zero only)."""
        if not trainer.is_global_zero:
            return
        adapter_dir = self.run_dir / "adapter"
        pl_module.save_adapter(adapter_dir)
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.save_pretrained(adapter_dir)


def config_files(argv: list[str]) -> list[str]:
    """Return the paths given to -c/--config in an argument list, in order."""
    return [path for index in range(len(argv)) if (path := _config_at(argv, index)) is not None]


def _config_at(argv: list[str], index: int) -> str | None:
    """Return the config path that argv[index] gives (-c PATH, --config PATH or --config=PATH), or None."""
    arg = argv[index]
    if arg in ("-c", "--config") and index + 1 < len(argv):
        return argv[index + 1]
    return arg.split("=", 1)[1] if arg.startswith("--config=") else None


def describe_key_sources(message: str, argv: list[str], workdir: Path) -> str:
    """Explain where the key named in a parser error message was set: the config files and the command line, in the
    order the parser reads them (later ones win; a command-line value is checked as soon as it is read)."""
    match = KEY_IN_ERROR.search(message)
    key = match and next(group for group in match.groups() if group)
    if not key:
        return ""
    sources = []
    for index, arg in enumerate(argv):
        if (path := _config_at(argv, index)) is not None:
            try:
                document = load_yaml((workdir / path).read_text())
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                continue  # error() names broken files on their own; the parser reports missing ones
            if _has_dotted_key(document, key):
                sources.append(f"in config file {path}")
        elif arg == f"--{key}" or arg.startswith(f"--{key}="):
            sources.append("on the command line")
    return f'\n  "{key}" is set {", then ".join(dict.fromkeys(sources))}' if sources else ""


def _has_dotted_key(document: object, key: str) -> bool:
    for part in key.split("."):
        if not isinstance(document, dict) or part not in document:
            return False
        document = document[part]
    return True


def choose_run_dir(root: Path, run_name: str | None, subcommand: str) -> Path:
    """Return root/run_name, or a fresh root/<subcommand>-<timestamp>[-N] when no name is given."""
    if run_name is not None:
        return root / run_name
    stem = f"{subcommand}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, suffix = root / stem, 1
    while candidate.exists():
        suffix += 1
        candidate = root / f"{stem}-{suffix}"
    return candidate


def cli_main(args: ArgsType = None, run: bool = True, callbacks: Sequence[Callback] = ()) -> LitTuningCLI:
    """Run the lit_tuning CLI on sys.argv or on the given args (a list or dict), the same path the sweep uses.

    ``callbacks`` join the configured ones: the sweep passes its pruning callback this way.
    """
    LitTuningParser.invoked([str(arg) for arg in args] if isinstance(args, list) else sys.argv[1:])
    try:
        cli = LitTuningCLI(args=args, run=run, extra_callbacks=callbacks, **cli_kwargs())
    except BaseException as exception:  # SystemExit included: no tracker run may stay RUNNING
        close_open_trackers(None if isinstance(exception, SystemExit) and not exception.code else exception)
        raise
    if run:
        close_open_trackers()
    return cli


def cli_kwargs() -> dict[str, Any]:
    """Return the LightningCLI construction arguments of lit_tuning, shared with the experiment config parser."""
    return {
        "model_class": LoRAModule,
        "datamodule_class": SpellingDataModule,
        "seed_everything_default": 42,
        "save_config_kwargs": {"overwrite": False},
        "auto_configure_optimizers": False,
        "parser_kwargs": {"parser_mode": PARSER_MODE},
        "parser_class": LitTuningParser,
    }
