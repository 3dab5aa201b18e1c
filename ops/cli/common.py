"""What the ``govml`` command groups share: spec lookup, the ``--as`` identity, argument
types, and the parsers of command groups and commands."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.config import Settings
from pipelines.errors import SpecError

if TYPE_CHECKING:
    from ops.identity import Identity
    from pipelines.spec import ModelSpec


# --------------------------------------------------------------------------- specs


def spec_path(name_or_path: str, settings: Settings) -> Path:
    """A spec by name (``fraud``: ``specs/fraud.yaml``) or by path (``*.yaml``)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        return path
    candidate = settings.specs_dir / f"{name_or_path}.yaml"
    if not candidate.exists():
        raise SpecError(f"no spec named {name_or_path!r} in {settings.specs_dir}")
    return candidate


def load_model_spec(name_or_path: str, settings: Settings) -> ModelSpec:
    """The validated spec named (or at the path) ``name_or_path``."""
    from pipelines.spec import load_spec

    return load_spec(spec_path(name_or_path, settings))


# --------------------------------------------------------------------------- identity


def add_identity_arguments(parser: argparse.ArgumentParser) -> None:
    """``--as USER`` (required) and ``--password-file``: who acts, proven by password."""
    parser.add_argument("--as", dest="user", required=True, help="your user name")
    parser.add_argument(
        "--password-file", default=None, help="file holding your password (else GOVML_PASSWORD)"
    )


def authenticate(args: argparse.Namespace, settings: Settings, user: str) -> Identity:
    """``user`` proven by password (``GOVML_PASSWORD``, ``--password-file`` or a prompt)."""
    from ops.identity import authenticate_user, password_for

    return authenticate_user(settings, user, password_for(user, args.password_file))


def acting_user(args: argparse.Namespace, settings: Settings) -> str:
    """The ``--as`` user, once proven."""
    return authenticate(args, settings, args.user).user


# --------------------------------------------------------------------------- argument types


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be greater than zero")
    return number


def unit_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"{value!r} must be between 0 and 1")
    return number


# --------------------------------------------------------------------------- parsers


@dataclass(frozen=True)
class Commands:
    """The commands of ``govml`` or of one of its command groups (argparse subparsers)."""

    subparsers: Any

    def add(
        self, name: str, func: Callable[..., int], help_text: str, **defaults: Any
    ) -> argparse.ArgumentParser:
        """One command that runs ``func(args, settings)`` (with ``defaults`` in ``args``);
        its arguments go on the parser returned."""
        parser = self.subparsers.add_parser(name, help=help_text)
        parser.set_defaults(func=func, **defaults)
        return parser

    def group(self, name: str, help_text: str, metavar: str | None = "ACTION") -> Commands:
        """``NAME ACTION ...``: a command group, its action in ``args.<name>_command``
        (``metavar`` None shows the actions' names instead of ACTION)."""
        parser = self.subparsers.add_parser(name, help=help_text)
        dest = f"{name.replace('-', '_')}_command"
        return Commands(parser.add_subparsers(dest=dest, required=True, metavar=metavar))
