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


def _help_problems(parser: argparse.ArgumentParser) -> list[str]:
    """What is wrong with ``parser``'s ``--help``: an option without help, an option whose default is not shown
    (a default that is 'not given' — None, False, SUPPRESS, compared by identity so that 0 is shown — excepted)."""
    problems = []
    for action, entry in _option_entries(parser):
        name = "/".join(action.option_strings) or action.dest
        if not (action.help and action.help.strip()):
            problems.append(f"{parser.prog}: {name} has no help text")
        not_given = any(action.default is v for v in (None, False, argparse.SUPPRESS))
        if action.option_strings and not not_given and "default" not in entry.lower():
            problems.append(f"{parser.prog}: {name} does not show its default: {entry!r}")
    return problems


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_option_of_every_verb_nested_ones_too_is_explained_with_its_default(verb):
    from pathalign.cli import _parsers

    for parser in _parsers(_verb_parser(verb)):
        assert _help_problems(parser) == []
        assert any("--debug" in a.option_strings for a in parser._actions), f"{parser.prog} has no --debug"


def test_the_help_check_finds_an_option_without_help_and_a_hidden_zero_default():
    """The check above on a planted parser: an option without help, and a default of 0 that is not shown."""
    p = argparse.ArgumentParser(prog="x")  # the plain formatter never shows a default
    p.add_argument("--silent", type=int, default=3)
    p.add_argument("--zero", type=int, default=0, help="how many")
    p.add_argument("--unset", type=int, default=None, help="how many")
    problems = _help_problems(p)
    assert len(problems) == 3, problems  # --silent: no help and no default; --zero: no default
    assert any("--silent has no help" in m for m in problems)
    assert any("--zero does not show its default" in m for m in problems)
    assert not any("--unset" in m for m in problems)


def test_a_zero_default_is_shown():
    from pathalign.cli import _HelpFormatter

    p = argparse.ArgumentParser(prog="x", formatter_class=_HelpFormatter)
    p.add_argument("--zero", type=int, default=0, help="how many")
    p.add_argument("--told", type=int, default=4, help="how many")
    entries = {a.dest: e for a, e in _option_entries(p)}
    assert "(default: 0)" in entries["zero"] and "(default: 4)" in entries["told"]


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


# --- one option set per verb: shared builders, one list syntax, one seeds parser -------------------------------

EXTRACTOR_OPTIONS = [["--encoder", "uni"], ["--weights", "w.pt"], ["--workers", "2"], ["--batch-size", "8"],
                     ["--device", "cpu"], ["--float32"]]
#: every list-valued option today; the walk below must find each of them as a list option
LIST_OPTIONS = {"--maf", "--modalities", "--embeddings", "--compare", "--modality", "--labels", "--missing-rates",
                "--missing-seeds", "--seeds", "--only", "--blocks", "--query"}


def _all_parsers() -> list[argparse.ArgumentParser]:
    from pathalign.cli import _parsers

    return [q for verb in sorted(VERBS) for q in _parsers(_verb_parser(verb))]


def _required_args(parser: argparse.ArgumentParser, skip: argparse.Action | None = None) -> list[str]:
    """Values for ``parser``'s positionals and required options (everything but ``skip``), so that it parses."""
    positionals = [a for a in parser._actions if not a.option_strings and a is not skip
                   and not isinstance(a, argparse._SubParsersAction)]
    options = [a for a in parser._actions if a.option_strings and a.required and a is not skip]
    return ["x" for _ in positionals] + [v for a in options for v in (a.option_strings[0], "x")]


@pytest.mark.parametrize("verb", ["segment", "patch"])
@pytest.mark.parametrize("option", EXTRACTOR_OPTIONS, ids=lambda o: o[0])
def test_segment_and_patch_refuse_extractor_options(verb, option, capsys):
    parser = build_parser(verb)
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args([verb, "slide.svs", "--out", "o", *option])
    assert exit_.value.code == 2
    assert f"unrecognized arguments: {' '.join(option)}" in capsys.readouterr().err
    for stage in ("extract", "preprocess"):  # the verbs that run the patch encoder take them
        build_parser(stage).parse_args([stage, "slide.svs", "--out", "o", *option])


def _list_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.nargs in ("+", "*")]


def _two_items(action: argparse.Action) -> tuple[str, str]:
    item = getattr(action, "item", str)
    if "seed" in action.dest or item is int:
        return "3", "1"
    return ("0.25", "1") if item is float else ("rna", "cnv")


def test_every_list_option_of_every_verb_takes_the_same_syntax():
    """Comma-separated, space-separated and both mixed parse to the same list, in every verb, nested ones too."""
    found = set()
    for parser in _all_parsers():
        for action in _list_actions(parser):
            opt = action.option_strings[0]
            found.add(opt)
            a, b = _two_items(action)
            base = _required_args(parser, skip=action)
            forms = [[opt, f"{a},{b}"], [opt, a, b], [opt, f"{a},", b], [opt, f" {a} , {b} "]]
            values = [getattr(parser.parse_args(base + form), action.dest) for form in forms]
            expected = values[0]
            assert len(expected) == 2 and all(v == expected for v in values), (parser.prog, opt, values)
    assert found >= LIST_OPTIONS, f"not parsed as list options: {sorted(LIST_OPTIONS - found)}"


def test_an_empty_list_or_a_bad_item_is_a_usage_error(capsys):
    parser = _verb_parser("heatmap")
    base = _required_args(parser)
    for bad in (["--query", ","], ["--blocks", "1,x"]):
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args(base + bad)
        assert exit_.value.code == 2 and bad[0] in capsys.readouterr().err


def test_every_seed_option_refuses_a_non_integer(capsys):
    """'1.5' as a seed is refused when parsed (never truncated to 1), for every option that takes seeds."""
    seen = []
    for parser in _all_parsers():
        for action in parser._actions:
            if not action.option_strings or "seed" not in action.dest:
                continue
            opt = action.option_strings[0]
            seen.append(f"{parser.prog} {opt}")
            base = _required_args(parser, skip=action)
            for bad in ("1.5", "0,1.5", "x"):
                with pytest.raises(SystemExit) as exit_:
                    parser.parse_args(base + [opt, bad])
                assert exit_.value.code == 2, (parser.prog, opt, bad)
                assert opt in capsys.readouterr().err
            assert parser.parse_args(base + [opt, "2"]).__dict__[action.dest] in (2, [2])
    assert {"pathalign bench --missing-seeds", "pathalign ablate --seeds", "pathalign train --seed"} <= set(seen), seen


def test_every_single_seed_option_is_built_by_seed_option():
    """One --seed, built once: every verb's --seed converts as the seeds parser does (seed_type, no copied int)."""
    from pathalign.cli.options import seed_type

    verbs = set()
    for parser in _all_parsers():
        for action in parser._actions:
            if "--seed" in action.option_strings:
                verbs.add(parser.prog)
                assert action.type is seed_type, (parser.prog, action.type)
    assert len(verbs) == 8, sorted(verbs)


def test_ablate_refuses_seed_with_seeds(capsys):
    parser = _verb_parser("ablate")
    base = _required_args(parser)
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(base + ["--seed", "0", "--seeds", "1,2"])
    assert exit_.value.code == 2 and "--seed" in capsys.readouterr().err
    assert parser.parse_args(base + ["--seed", "3"]).seed == 3
    assert parser.parse_args(base + ["--seeds", "1,2"]).seeds == [1, 2]


def test_seed_lists_refuse_repeats():
    parser = _verb_parser("ablate")
    with pytest.raises(SystemExit):
        parser.parse_args(_required_args(parser) + ["--seeds", "0,1,1"])


def test_every_verb_help_imports_no_torch():
    """'pathalign VERB --help' answers without importing torch, for every verb (one interpreter, verbs in turn)."""
    probe = ("import contextlib, io, json, sys\nfrom pathalign.cli import main\nwith_torch = []\n"
             f"for verb in {sorted(VERBS)!r}:\n"
             "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
             "        main([verb, '--help'])\n"
             "    if 'torch' in sys.modules:\n"
             "        with_torch.append(verb)\n"
             "print(json.dumps(with_torch))\n")
    proc = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "PYTHONPATH": str(SRC)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with_torch = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not with_torch, f"torch imported by the --help of {with_torch[0]} (and kept for {with_torch[1:]})"


def test_doctor_and_patch_share_the_slide_reader_and_patch_grid_options():
    """doctor checks slides under the settings patch/preprocess will use: the same options, defaults, choices and
    help, and --backend offers exactly the reader's backends."""
    from pathalign.slides.reader import SLIDE_BACKENDS

    shared = ("--magnification", "--patch-size", "--scale", "--mpp", "--backend")

    def options(verb):
        actions = {a.option_strings[0]: a for a in _verb_parser(verb)._actions if a.option_strings}
        return {o: (type(actions[o]), actions[o].type, actions[o].default, actions[o].choices, actions[o].help)
                for o in shared}

    assert options("doctor") == options("patch") == options("preprocess")
    backend = options("doctor")["--backend"]
    assert list(backend[3]) == ["auto", *SLIDE_BACKENDS.names()] and "wsidicom" in backend[3]


@pytest.mark.parametrize("option, fallback", [("--batch-size", "the preset's"), ("--max-tokens", "the preset's"),
                                              ("--workers", "0"), ("--modalities", "the cohort's")])
def test_train_options_without_a_default_say_what_they_fall_back_to(option, fallback):
    action = next(a for a in _verb_parser("train")._actions if option in a.option_strings)
    assert action.default is None and f"default: {fallback}" in action.help, action.help


#: verbs whose --help description is their library module's docstring (the verb's module only points to it)
LIBRARY_DOCS = {"ablate": "evaluate/ablate.py", "embed": "evaluate/embed.py", "bench": "evaluate/bench.py",
                "analyze": "evaluate/analyze.py", "pretrain-rna": "train/rna_pretrain.py",
                "synth": "synth/__init__.py", "view": "viewer/server.py"}


@pytest.mark.parametrize("verb", sorted(LIBRARY_DOCS))
def test_verb_modules_point_to_the_library_and_help_shows_its_docstring(verb):
    import ast
    import importlib

    mod = importlib.import_module(VERBS[verb].module)
    library = (SRC / "pathalign" / LIBRARY_DOCS[verb])
    doc = ast.get_docstring(ast.parse(library.read_text()))
    own = mod.__doc__.strip()
    assert len(own.splitlines()) <= 2 and f"pathalign {verb}" in own, own  # no copy of the library's docstring
    dotted = "pathalign." + LIBRARY_DOCS[verb].removesuffix(".py").removesuffix("/__init__").replace("/", ".")
    assert dotted in own, own
    from pathalign.cli import _parsers

    for parser in _parsers(_verb_parser(verb)):  # analyze adapters too
        assert parser.description.strip() == doc.strip(), parser.prog
