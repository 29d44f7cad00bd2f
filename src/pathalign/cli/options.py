"""Options shared by the verbs, built once: ``--out``, ``--device``, ``--seed``, ``--seeds``, ``--quiet``, ``--debug``,
and the one syntax of every list-valued option.

Each builder returns a parent parser (``argparse.ArgumentParser(add_help=False)``) that a verb takes with
``parents=[...]`` when it creates a nested parser (``cohort build``, ``analyze adapters``), or with
:func:`include` on the parser it is given. Nothing here imports torch: ``pathalign VERB --help`` stays light.

Lists: every list-valued option takes one or more values, each of which may itself be a comma-separated
list; ``--seeds 0,1,2``, ``--seeds 0 1 2`` and ``--seeds 0,1 2`` are the same three seeds, in every verb.
The comma form is the one the documentation writes; the space form is what a shell glob gives
(``--maf *.maf``). Empty items (``0,,1``, a trailing comma) are dropped; no item at all is an error.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ..devices import DEVICE_HELP

__all__ = ["ListOption", "debug_option", "device_option", "include", "include_exclusive", "library_doc", "out_option", "parse_seeds",
           "quiet_option", "seed_option", "seed_type", "seed_value", "seeds_option", "split_list"]

DEBUG_HELP = "show the Python traceback of expected errors too (also PATHALIGN_DEBUG=1)"
LIST_SYNTAX = "comma- or space-separated"


def split_list(values: str | list[str]) -> list[str]:
    """The items of a list option's values: each value split on commas, blanks stripped, empty items dropped.

    Args:
        values: one command-line value or several (``["0,1", "2"]``).

    Returns:
        The items in order (``["0", "1", "2"]``).
    """
    values = [values] if isinstance(values, str) else list(values)
    return [item.strip() for value in values for item in str(value).split(",") if item.strip()]


def seed_value(text: str) -> int:
    """One seed: an integer written as one (``1.5`` or ``x`` is refused, never truncated)."""
    text = str(text).strip()
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"a seed is an integer, got {text!r}") from None


def seed_type(text: str) -> int:
    """:func:`seed_value` as an argparse ``type``: a non-integer is a usage error naming the option."""
    try:
        return seed_value(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_seeds(values: str | list[str], option: str = "--seeds") -> list[int]:
    """Seeds from a list option's values: integers, distinct, at least one.

    Args:
        values: ``"0,1,2"`` or ``["0", "1", "2"]`` (the list syntax of every verb).
        option: the option named in the error.

    Returns:
        The seeds in the given order.

    Raises:
        ValueError: an item that is not an integer (``1.5`` too), a seed given twice, or none at all;
            the message names ``option``.
    """
    given = values if isinstance(values, str) else " ".join(values)
    try:
        seeds = [seed_value(s) for s in split_list(values)]
    except ValueError:
        raise ValueError(f"{option} must be {LIST_SYNTAX} integers, got {given!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"{option} must name distinct seeds, got {given!r}")
    return seeds


class ListOption(argparse.Action):
    """A list-valued option: one or more values, each comma-separated (see the module's docstring).

    ``item`` converts each item (``str``, ``int``, ``float``, ...); a ``ValueError`` from it is a usage
    error naming the option. ``parse`` instead takes the whole list of values (the seeds parser does).
    """

    def __init__(self, option_strings: list[str], dest: str, item: Callable[[str], Any] = str,
                 parse: Callable[[list[str], str], list] | None = None, **kwargs: Any):
        kwargs.pop("nargs", None)
        super().__init__(option_strings, dest, nargs="+", **kwargs)
        self.item, self.parse = item, parse

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: D102 - argparse's interface
        option = option_string or "/".join(self.option_strings)
        try:
            out = self.parse(values, option) if self.parse is not None else self._items(values, option)
        except ValueError as e:  # argparse names the option first: "argument --seeds: ..."
            message = str(e)
            raise argparse.ArgumentError(self, message.removeprefix(f"{option} ")) from None
        setattr(namespace, self.dest, out)

    def _items(self, values: list[str], option: str) -> list:
        items = split_list(values)
        if not items:
            raise ValueError(f"{option} needs at least one value ({LIST_SYNTAX})")
        out = []
        for item in items:
            try:
                out.append(self.item(item))
            except ValueError:
                kind = {int: "integers", float: "numbers"}.get(self.item, "values")
                raise ValueError(f"{option} takes {LIST_SYNTAX} {kind}, got {item!r}") from None
        return out


def library_doc(module: str) -> str:
    """The docstring of the library module ``module`` (``"pathalign.evaluate.bench"``), read from its source
    without importing it, so that ``pathalign VERB --help`` stays light. A verb module that sets ``DOC_FROM``
    gets it as its ``--help`` description."""
    import ast
    from pathlib import Path

    path = Path(__file__).resolve().parents[1].joinpath(*module.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""


def _parent() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


def include(parser: argparse.ArgumentParser, *parents: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of ``parents`` to an existing ``parser``, as ``parents=`` does when a parser is made."""
    for parent in parents:
        parser._add_container_actions(parent)
        parser._defaults.update(parent._defaults)
    return parser


def include_exclusive(parser: argparse.ArgumentParser, *parents: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of ``parents`` to ``parser`` as one mutually exclusive group: giving two is a usage error.

    An option's default should be ``None``: argparse sees an option as given only when its value is not its
    default *object* (``--seed 0`` with a default of ``0`` would go unseen)."""
    group = parser.add_mutually_exclusive_group()
    for parent in parents:
        for action in parent._actions:
            group._add_action(action)
        parser._defaults.update(parent._defaults)
    return parser


def out_option(help: str, *, required: bool = True, default: str | None = None) -> argparse.ArgumentParser:
    """``--out``: where the verb writes (checked writable before any work by ``pathalign``'s preflight)."""
    p = _parent()
    p.add_argument("--out", required=required, default=default, help=help)
    return p


def device_option(default: str | None = "auto", help: str = DEVICE_HELP) -> argparse.ArgumentParser:
    """``--device``: where the verb computes (resolved by :func:`pathalign.devices.resolve_device`)."""
    p = _parent()
    p.add_argument("--device", default=default, help=help)
    return p


def seed_option(help: str, default: int | None = 0) -> argparse.ArgumentParser:
    """``--seed``: one integer seed, converted as the seeds of :func:`seeds_option` are (``1.5`` refused)."""
    p = _parent()
    p.add_argument("--seed", type=seed_type, default=default, metavar="SEED", help=help)
    return p


def seeds_option(option: str = "--seeds", default: list[int] | None = None,
                 help: str = "seeds, every run once per seed") -> argparse.ArgumentParser:
    """A list of seeds (``option``), parsed by :func:`parse_seeds` in every verb: non-integers and repeats refused."""
    p = _parent()
    p.add_argument(option, action=ListOption, parse=parse_seeds, default=default, metavar="SEED", help=help)
    return p


def quiet_option(help: str = "no progress bar") -> argparse.ArgumentParser:
    """``--quiet``: no progress output."""
    p = _parent()
    p.add_argument("--quiet", action="store_true", help=help)
    return p


def debug_option(default: Any = argparse.SUPPRESS) -> argparse.ArgumentParser:
    """``--debug``: tracebacks of expected errors too. On a verb's parser its default is SUPPRESS, so that
    ``pathalign --debug VERB`` keeps the top-level value."""
    p = _parent()
    p.add_argument("--debug", action="store_true", default=default, help=DEBUG_HELP)
    return p
