"""The ``pathalign`` command line: every verb explains its options; the top level stays light."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pathalign.cli import VERBS, build_parser, main

SRC = Path(__file__).resolve().parents[1] / "src"
HEAVY = ("torch", "numpy", "pandas", "h5py", "sklearn", "scipy", "matplotlib", "tifffile")


def _verb_parser(verb: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser(verb)._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[verb]


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([verb, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: pathalign {verb}"), out


def _option_entries(parser: argparse.ArgumentParser) -> list[tuple[argparse.Action, str]]:
    """Each option of ``parser`` with its entry in ``--help`` as the parser's own formatter writes it."""
    formatter = parser._get_formatter()
    return [(a, formatter._format_action(a)) for a in parser._actions
            if not isinstance(a, (argparse._SubParsersAction, argparse._HelpAction))]


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_option_of_every_verb_nested_ones_too_is_explained_with_its_default(verb):
    from pathalign.cli import _parsers

    for parser in _parsers(_verb_parser(verb)):
        for action, entry in _option_entries(parser):
            name = "/".join(action.option_strings) or action.dest
            assert action.help and action.help.strip(), f"{parser.prog}: {name} has no help text"
            shows = action.default in (None, False, argparse.SUPPRESS) or not action.option_strings
            assert shows or "default" in entry.lower(), f"{parser.prog}: {name} does not show its default: {entry!r}"
        assert any("--debug" in a.option_strings for a in parser._actions), f"{parser.prog} has no --debug"


def test_the_help_check_finds_an_option_without_help():
    """The check above on a parser with a planted option that has no help (and one hiding its default)."""
    from pathalign.cli import _HelpFormatter

    p = argparse.ArgumentParser(prog="x", formatter_class=_HelpFormatter)
    p.add_argument("--silent", type=int, default=3)
    p.add_argument("--told", type=int, default=4, help="how many")
    entries = {a.dest: (a, e) for a, e in _option_entries(p)}
    assert not entries["silent"][0].help
    assert "(default: 4)" in entries["told"][1]


def test_nested_verbs_take_debug_and_report_errors_as_pathalign(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATHALIGN_DEBUG", "")  # --debug sets it for the process; monkeypatch restores it after the test
    rc = main(["cohort", "build", "--out", str(tmp_path / "c"), "--clinical", str(tmp_path / "none.tsv"),
               "--rna-units", "bogus"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("pathalign: error: ") and "--rna-units" in err, err
    with pytest.raises(Exception) as e:  # --debug after the nested verb: the traceback, not an unknown argument
        main(["cohort", "build", "--out", str(tmp_path / "c"), "--clinical", str(tmp_path / "none.tsv"),
              "--rna-units", "bogus", "--debug"])
    assert "--rna-units" in str(e.value)


def test_no_verb_prints_help(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    for verb, spec in VERBS.items():
        assert verb in err and spec.help.split()[0] in err
    assert set(VERBS) >= {"synth", "segment", "patch", "extract", "preprocess", "cohort", "pretrain-rna", "train",
                          "embed", "bench", "ablate", "demo"}


def test_help_text_with_a_percent_sign(monkeypatch, capsys):
    """argparse %-formats help strings: a verb's help with a literal '%' must still print."""
    from pathalign import cli

    monkeypatch.setitem(cli.VERBS, "pct", cli.Verb("pathalign.cli.encode_example", "mean ± 95 % CI (100%)"))
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    assert "mean ± 95 % CI (100%)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["pct", "--help"])
    assert "usage: pathalign pct" in capsys.readouterr().out


def _fresh_modules(code: str) -> set[str]:
    """Modules loaded by ``code`` in a fresh interpreter."""
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


def test_top_level_parser_imports_no_verb_and_no_torch():
    loaded = _fresh_modules("import contextlib, io\nfrom pathalign.cli import build_parser, main\nbuild_parser()\n"
                            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
                            "    main(['--help'])\n"
                            "with contextlib.redirect_stderr(io.StringIO()), contextlib.suppress(SystemExit):\n"
                            "    main(['no-such-verb']), main(['--no-such-option'])\n")
    assert not _heavy(loaded), _heavy(loaded)
    verb_modules = {spec.module for spec in VERBS.values()}
    assert not verb_modules & loaded, verb_modules & loaded


def test_verb_help_imports_only_that_verb():
    loaded = _fresh_modules("import contextlib, io\nfrom pathalign.cli import main\n"
                            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
                            "    main(['train', '--help'])\n")
    others = {spec.module for name, spec in VERBS.items() if spec.module != VERBS["train"].module}
    assert VERBS["train"].module in loaded
    assert not others & loaded, others & loaded


def test_encode_example_runs(capsys):
    assert main(["encode-example", "--patches", "200", "--fragments", "3"]) == 0
    assert "slide_embedding (832,)" in capsys.readouterr().out
