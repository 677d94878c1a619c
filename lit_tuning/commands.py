"""The one argument style of every `python -m` entry point: jsonargparse parsers, checked numbers, one-line errors."""

from __future__ import annotations

import math
import sys
from argparse import ArgumentError
from collections.abc import Sequence
from typing import Any, Literal, NoReturn, get_args, get_origin

from jsonargparse import ArgumentParser, Namespace
from jsonargparse.typing import restricted_number_type

from lit_tuning.paths import DEFAULT_STORAGE

# Numbers a command line accepts: bounded, so that NaN, infinity and absurd sizes are refused by the parser.
Count = restricted_number_type("Count", int, [(">=", 1), ("<=", 1_000_000)], join="and")
NonNegativeCount = restricted_number_type("NonNegativeCount", int, [(">=", 0), ("<=", 1_000_000)], join="and")
Seconds = restricted_number_type("Seconds", float, [(">", 0), ("<", math.inf)], join="and")
ALLOWED = {
    Count: "an integer from 1 to 1,000,000",
    NonNegativeCount: "an integer from 0 to 1,000,000",
    Seconds: "a finite number of seconds > 0",
}


class CommandLineError(ValueError):
    """A command line an entry point refuses; the message names the flag, the value and what is allowed."""


def command_parser(prog: str, description: str | None) -> ArgumentParser:
    """Return an entry point's parser: jsonargparse, raising instead of exiting, so `run_parser` can word the error."""
    return ArgumentParser(prog=prog, description=description, exit_on_error=False, default_env=False)


def add_study_options(parser: ArgumentParser, *, study_help: str) -> None:
    """Add --storage and --study, the options every command that reads or runs a study shares."""
    parser.add_argument("--study", type=str | None, default=None, help=study_help)
    parser.add_argument("--storage", default=DEFAULT_STORAGE, help=f"Optuna storage URL (default {DEFAULT_STORAGE})")


def listed(value: Any) -> list[Any]:
    """Return a list flag's value as a list: flags typed `list[T] | T` take one value alone or several as [x,y]."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def parse(parser: ArgumentParser, argv: Sequence[str] | None = None) -> Namespace:
    """Parse argv (default: the process's own arguments); raise CommandLineError with one line naming the flag."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        options = parser.parse_args(argv)
    except ArgumentError as error:
        raise CommandLineError(describe(parser, argv, error)) from None
    for key, value in options.items():
        options[key] = _builtin(value)
    return options


def _builtin(value: Any) -> Any:
    """Turn the restricted number types' values (int and float subclasses) into plain int and float, so that
    whatever a command writes them into (YAML, a config) sees ordinary numbers."""
    if isinstance(value, list):
        return [_builtin(item) for item in value]
    if type(value) is not bool and isinstance(value, int) and type(value) is not int:
        return int(value)
    if isinstance(value, float) and type(value) is not float:
        return float(value)
    return value


def split_known(parser: ArgumentParser, argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split argv into the parser's own options (with their values) and the rest, which a command passes on."""
    arities = {flag: action.nargs for action in parser._actions for flag in action.option_strings}
    own: list[str] = []
    rest: list[str] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        flag = arg.partition("=")[0]
        if flag not in arities:
            rest.append(arg)
            continue
        own.append(arg)
        if "=" not in arg and arities[flag] != 0 and args:  # store_true flags (nargs 0) take no value
            own.append(args.pop(0))
    return own, rest


def parse_or_exit(parser: ArgumentParser, argv: Sequence[str] | None = None) -> Namespace:
    """Parse argv, or print the one-line error and exit 2 (the status of every bad command line)."""
    try:
        return parse(parser, argv)
    except CommandLineError as error:
        fail(str(error))


def fail(message: str) -> NoReturn:
    """Print `error: message` to stderr and exit 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def describe(parser: ArgumentParser, argv: Sequence[str], error: ArgumentError) -> str:
    """Word a parser error on one line: the flag as typed, the value given, and what the flag allows."""
    message = str(error)
    key = message.partition('Parser key "')[2].partition('"')[0]
    if not key:
        return f"{parser.prog}: {' '.join(line.strip() for line in message.splitlines())}"
    action = next((a for a in _actions(parser) if a.dest.rpartition(".")[2] == key.rpartition(".")[2]), None)
    flags = [flag for flag in getattr(action, "option_strings", ()) if not flag.endswith("+")]  # not list-append
    flag = flags[-1] if flags else f"--{key}"
    value = _given(argv, flag)
    allowed = _allowed(action)
    return f"{parser.prog}: {flag} = {value!r}; allowed: {allowed}"


def _actions(parser: ArgumentParser) -> list[Any]:
    actions = list(parser._actions)
    for action in parser._actions:
        for sub in getattr(action, "_name_parser_map", {}).values():
            actions += _actions(sub)
    return actions


def _given(argv: Sequence[str], flag: str) -> str | None:
    for index, arg in enumerate(argv):
        if arg == flag and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(flag + "="):
            return arg.partition("=")[2]
    return None


def _allowed(action: Any) -> str:
    if getattr(action, "choices", None):
        return ", ".join(map(str, action.choices))
    return _allowed_values(getattr(action, "_typehint", None) or getattr(action, "type", None))


def _allowed_values(kind: Any) -> str:
    if get_origin(kind) is list:
        return f"a list like [x,y] of {_allowed_values(get_args(kind)[0])}"
    for number_type, words in ALLOWED.items():
        if kind is number_type or number_type in getattr(kind, "__args__", ()):
            return words + (" (or omit it)" if type(None) in getattr(kind, "__args__", ()) else "")
    if get_origin(kind) is Literal:
        return ", ".join(map(str, get_args(kind)))
    return getattr(kind, "__name__", None) or str(kind)
