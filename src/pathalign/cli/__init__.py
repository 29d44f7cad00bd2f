"""``pathalign`` command line: one subcommand per pipeline stage.

Each subcommand is a module of this package, ``pathalign.cli.<verb>``, with ``add_arguments(parser)``
and ``run(args) -> int``: ``run`` turns the parsed options into a call of the library (which never sees
argparse). Options that several verbs share, and the one syntax of list-valued options, are built in
:mod:`pathalign.cli.options`. This file only holds the table of verbs (name -> module path, help) and
imports a verb's module when that verb runs (or shows its ``--help``); a verb module imports the
library inside ``run``, so that ``pathalign --help``, ``pathalign VERB --help`` and a mistyped command
answer at once without importing torch.

Errors: an expected failure (:class:`pathalign.errors.PathalignError`: bad input, missing file,
unusable option) is printed as one line ``pathalign: error: <message>`` on stderr with exit
code 2; so is a usage error. Anything else is a bug and keeps its traceback. ``--debug`` (or
``PATHALIGN_DEBUG=1``) shows the traceback of expected errors too.
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys
from typing import NamedTuple

from ..errors import PathalignError
from .options import debug_option, include, library_doc


class Verb(NamedTuple):
    """One subcommand: where it lives and what it writes."""

    module: str
    help: str
    out: str | None = "dir"  # what ``--out`` is: "dir", "file" or None (checked writable before running)


VERBS: dict[str, Verb] = {
    "segment": Verb("pathalign.cli.segment", "segment slides into tissue fragments (GeoJSON + thumbnail)"),
    "patch": Verb("pathalign.cli.patch", "patch tissue at a target magnification (coords.h5)"),
    "extract": Verb("pathalign.cli.extract", "extract patch features (features.h5)"),
    "preprocess": Verb("pathalign.cli.preprocess", "segment, patch and extract in one go (torchrun-shardable)"),
    "doctor": Verb("pathalign.cli.doctor", "pre-flight check of slides: opens, backend, mpp, objective power, "
                   "levels, the scale preprocess would use (no pixel computed)", out=None),
    "synth": Verb("pathalign.cli.synth", "write a synthetic multimodal cohort in the real file formats"),
    "cohort": Verb("pathalign.cli.cohort", "build a cohort from clinical, slide and molecular tables"),
    "pretrain-rna": Verb("pathalign.cli.pretrain_rna", "pretrain the RNA foundation model on a cohort's RNA samples"),
    "train": Verb("pathalign.cli.train", "train the multimodal alignment (torchrun for DDP)"),
    "embed": Verb("pathalign.cli.embed", "embed every modality of every patient and slide (embeddings.h5)",
                  out="file"),
    "bench": Verb("pathalign.cli.bench", "benchmark embeddings: probes, survival, retrieval, cross-modal retrieval"),
    "demo": Verb("pathalign.cli.demo", "the whole life cycle on a synthetic cohort, with a report (what make demo runs)"),
    "ablate": Verb("pathalign.cli.ablate", "train and bench the paper's ablations over seeds (mean ± 95 % CI)"),
    "analyze": Verb("pathalign.cli.analyze", "analyse a trained model: its pair adapters W_ij (subspaces, CKA, "
                                             "input attribution)"),
    "heatmap": Verb("pathalign.cli.heatmap", "per-patch heatmaps of a model on one slide: attention, "
                                             "cross-modal alignment, query similarity (HDF5, PNG, QuPath)"),
    "view": Verb("pathalign.cli.view", "look at a slide with its heatmaps in the browser (127.0.0.1 only)", out=None),
    "encode-example": Verb("pathalign.cli.encode_example", "encode a random slide with the F-RoPE slide encoder",
                           out=None),
}


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr (exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see '{self.prog} --help')\n")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The verbs' help layout: descriptions as written, and each option's default after its help unless the help
    already says it (or there is none to show: a flag, an option whose default is 'not given')."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        not_given = any(action.default is v for v in (None, False, argparse.SUPPRESS))  # by identity: 0 == False
        if (not action.option_strings or "default" in text.lower() or not_given
                or isinstance(action, argparse._VersionAction)):
            return text
        if isinstance(action.default, list):  # a list option's default, written in the list syntax
            return f"{text} (default: {','.join(map(str, action.default)).replace('%', '%%')})"
        return f"{text} (default: %(default)s)"


def _parsers(p: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``p`` and every parser nested under it (``cohort build``, ``analyze adapters``)."""
    out = [p]
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for q in a.choices.values():
                out += _parsers(q)
    return out


def _verb_of(argv: list[str]) -> str | None:
    """The command word: the first argument that is not an option (top-level options take no value)."""
    for arg in argv:
        if arg == "--":
            return None
        if not arg.startswith("-"):
            return arg
    return None


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The ``pathalign`` parser; only ``verb``'s module is imported and its options added.

    Args:
        verb: the subcommand about to run (or show its help); ``None`` imports no verb module.

    Returns:
        The parser; a parsed verb's namespace carries its module as ``_module``.
    """
    from .. import __version__

    parser = _Parser(prog="pathalign", description="Align whole-slide images with molecular profiles.",
                     epilog="Run 'pathalign COMMAND --help' for a command's options.")
    include(parser, debug_option(default=False))
    parser.add_argument("--version", action="version", version=f"pathalign {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, spec in VERBS.items():
        help_text = spec.help.replace("%", "%%")  # argparse %-formats help strings ("95 % CI" would raise)
        if name != verb:  # listed in --help; never parsed (main builds the parser for the verb it sees)
            sub.add_parser(name, help=help_text, add_help=False)
            continue
        mod = importlib.import_module(spec.module)
        doc = library_doc(mod.DOC_FROM) if hasattr(mod, "DOC_FROM") else mod.__doc__  # the library's, not a copy
        p = sub.add_parser(name, help=help_text, description=(doc or spec.help).strip(),
                           formatter_class=_HelpFormatter)
        mod.add_arguments(p)
        for q in _parsers(p):  # nested verbs too: 'pathalign cohort build ... --debug'
            q.formatter_class = _HelpFormatter
            if not any("--debug" in a.option_strings for a in q._actions):
                include(q, debug_option())
        p.set_defaults(_module=mod)
    return parser


def preflight(command: str, args: argparse.Namespace) -> None:
    """Checks every verb gets before it starts, so that they fail at once and write nothing.

    ``--out`` must be writable (``OutputPathError``) and ``--device`` must exist on this machine
    (``DeviceError``); both are :class:`PathalignError`. The device is checked by the rule each process
    applies when it starts (:func:`pathalign.devices.resolve_device`, torchrun's ranks included).
    """
    out, kind = getattr(args, "out", None), VERBS[command].out
    if out is not None and kind is not None:
        from .outputs import check_output_dir, check_output_file

        (check_output_file if kind == "file" else check_output_dir)(out, "--out")
    if getattr(args, "device", None) is not None:
        from ..devices import resolve_device

        resolve_device(args.device)


def _one_line(message: str) -> str:
    return " ".join(str(message).split()) or "(no message)"


def main(argv: list[str] | None = None) -> int:
    """Run ``pathalign`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code.

    0 success, 2 usage or expected error (one line on stderr), other codes a command's own
    (e.g. 3: a batch finished with failed items).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    verb = _verb_of(argv)
    if verb is not None and verb not in VERBS:
        close = difflib.get_close_matches(verb, VERBS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        print(f"pathalign: error: unknown command '{verb}'{hint} (see 'pathalign --help')", file=sys.stderr)
        return 2
    debug = bool(os.environ.get("PATHALIGN_DEBUG"))
    try:
        parser = build_parser(verb)
        args = parser.parse_args(argv)
        debug = debug or bool(getattr(args, "debug", False))
        if debug:
            os.environ["PATHALIGN_DEBUG"] = "1"  # per-item tracebacks in batch commands too
        if not getattr(args, "command", None):
            parser.print_help(sys.stderr)
            return 2
        preflight(args.command, args)
        return int(args._module.run(args) or 0)
    except PathalignError as e:
        if debug:
            raise
        print(f"pathalign: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pathalign: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and friends: not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
