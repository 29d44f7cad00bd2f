"""Every CLI verb builds its parser and explains its options."""
from __future__ import annotations

import pytest

from pathalign.cli import SUBCOMMANDS, build_parser, main


@pytest.mark.parametrize("verb", sorted(SUBCOMMANDS))
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([verb, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "usage: pathalign" in out and "--" in out


def test_no_verb_prints_help(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out
    assert set(SUBCOMMANDS) >= {"synth", "segment", "patch", "extract", "preprocess", "cohort", "pretrain-rna", "train",
                                "embed", "bench", "ablate", "demo"}
    build_parser()


def test_encode_example_runs(capsys):
    assert main(["encode-example", "--patches", "200", "--fragments", "3"]) == 0
    assert "slide_embedding (832,)" in capsys.readouterr().out
