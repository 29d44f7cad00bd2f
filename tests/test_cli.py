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
    options = [s for a in _verb_parser(verb)._actions for s in a.option_strings if s.startswith("--")]
    assert "--help" in options
    missing = [o for o in options if o not in out]
    assert not missing, f"{verb} --help does not list {missing}"


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

    monkeypatch.setitem(cli.VERBS, "pct", cli.Verb("pathalign.commands.encode_example", "mean ± 95 % CI (100%)"))
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
