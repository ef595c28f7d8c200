"""The one convention every command line of the package follows.

* User mistakes (a bad flag, config field, path or file) raise :class:`UsageError`; argparse's
  own errors do too (:class:`Parser`).
* :func:`run_cli` turns one into a single ``error: ...`` line on stderr and exit status
  :data:`EXIT_USAGE`, with no traceback and nothing written; warnings raised while the command
  runs print as single ``warning: ...`` lines.
* Notes for the user go through :func:`say` (``note: ...``) on stderr, so stdout holds results.
* A run stopped by a signal after saving its state raises :class:`Interrupted`; :func:`run_cli`
  exits with the shell's status for that signal, ``128 + signum`` (143 for SIGTERM, 130 for SIGINT).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import signal
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

from focusformer_fast.utils.version import __version__

EXIT_USAGE = 2


class UsageError(ValueError):
    """A user mistake: reported in one line naming the flag, field or file and what is allowed."""


class Interrupted(Exception):
    """A signal stopped the command after it saved what it needs to continue (and said how)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_status(self) -> int:
        """``128 + signum``: what a shell reports for a process the signal ended."""
        return 128 + self.signum


class Parser(argparse.ArgumentParser):
    """argparse whose errors are :class:`UsageError` (one line through :func:`run_cli`)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def flag(name: str) -> str:
    """The command-line flag of field ``name`` (``batch_size`` -> ``--batch-size``)."""
    return "--" + name.replace("_", "-")


def add_version(parser: argparse.ArgumentParser) -> None:
    """``--version``: print ``<prog> <package version>`` and exit 0."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")


_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def field_type(field: dataclasses.Field) -> type:
    """The type a dataclass field's annotation names first: ``int | None`` -> ``int``; lists -> ``str``."""
    return _TYPES.get(str(field.type).split("|")[0].strip(), str)


class _OldName(argparse.Action):
    """A flag also taken under its old name, which warns (once per use) naming the new one."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if option_string != self.option_strings[0]:
            say("warning", f"{option_string} is deprecated; use {self.option_strings[0]}")
        setattr(namespace, self.dest, values)


def add_option_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, options: type,
                     old_names: dict[str, str] | None = None) -> None:
    """One flag per field of the dataclass ``options``, named after it and documented by its ``metadata["help"]``.

    A bool field is a ``--x/--no-x`` switch; any other takes the type its annotation names first
    (``int | None`` -> ``int``). ``old_names`` maps a field to a deprecated flag still accepted for
    it. Defaults are left to the parser's defaults (see :func:`state_defaults`).
    """
    for f in dataclasses.fields(options):
        name, help_text, kind = flag(f.name), f.metadata["help"], field_type(f)
        if kind is bool:
            parser.add_argument(name, action=argparse.BooleanOptionalAction, help=help_text)
        elif old_names and f.name in old_names:
            parser.add_argument(name, old_names[f.name], type=kind, action=_OldName, dest=f.name,
                                help=f"{help_text}; {old_names[f.name]} is its old name")
        else:
            parser.add_argument(name, type=kind, help=help_text)


def state_defaults(parser: argparse.ArgumentParser, defaults: dict[str, Any] | None = None) -> argparse.ArgumentParser:
    """Append ``(default ...)`` to every option's help that does not say its default yet.

    The default is ``defaults[dest]`` when given (parsers whose defaults live elsewhere, e.g. a
    config dataclass), else the action's own; a flag without one says ``(default: off)`` or ``none``;
    a required flag says nothing.
    """
    for action in parser._actions:
        if (not action.option_strings or action.required or action.help == argparse.SUPPRESS
                or "default" in (action.help or "")):
            continue
        value = (defaults or {}).get(action.dest, action.default)
        if value is argparse.SUPPRESS:
            continue
        if isinstance(action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)) and not value:
            text = "off" if value is False or isinstance(action, argparse._StoreTrueAction) else "auto"
        elif value is None:
            text = "none"
        elif isinstance(value, (list, tuple)):
            text = ",".join(str(v) for v in value)
        else:
            text = str(value)
        action.help = f"{action.help} (default: {text})" if action.help else f"(default: {text})"
    return parser


def one_line(message: object) -> str:
    """``message`` with its white space (newlines included) folded to single spaces."""
    return " ".join(str(message).split())


_held: list[str] | None = None  # notes said inside held_notes(), not printed yet


def say(kind: str, message: object) -> None:
    """Print ``kind: message`` on one line of stderr (``kind``: note, warning, error); inside
    :func:`held_notes`, notes wait."""
    line = f"{kind}: {one_line(message)}"
    if kind == "note" and _held is not None:
        _held.append(line)
    else:
        print(line, file=sys.stderr)


@contextlib.contextmanager
def held_notes() -> Iterator[None]:
    """Hold the notes said inside until it ends: printed in order if it ends normally, dropped on
    an exception, so a command that refuses its input prints the one ``error:`` line alone."""
    global _held
    outer, _held = _held, []
    try:
        yield
        if outer is not None:  # an enclosing hold keeps them
            outer.extend(_held)
        else:
            for line in _held:
                print(line, file=sys.stderr)
    finally:
        _held = outer


def _warning_line(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    say("warning", message)


def run_cli(work: Callable[[], object]) -> int:
    """Run a command's ``work``; exit status 0, or :data:`EXIT_USAGE` after one ``error:`` line
    for a :class:`UsageError`, or ``128 + signum`` when a signal stopped it (:class:`Interrupted`).
    Warnings print as one line each while it runs."""
    with warnings.catch_warnings():
        warnings.showwarning = _warning_line
        try:
            work()
        except UsageError as exc:
            say("error", exc)
            return EXIT_USAGE
        except Interrupted as stop:
            return stop.exit_status
    return 0
