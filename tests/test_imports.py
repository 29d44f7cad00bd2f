"""No import cycle in the package: each module imports alone, and no import statement (at module
level or inside a function) closes a loop between modules. No import climbs the layers of
``LAYERS`` (data flows down the stages: nothing below reaches up).

Cheap by design: the cycle check reads the import statements with ``ast``; the "imports alone"
check runs every module in one interpreter after dropping every ``pathalign`` module from
``sys.modules`` (third-party packages stay cached: they cannot take part in our cycles), and a
few modules are also imported in truly fresh interpreters, in parallel.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

from pathalign.cli import VERBS

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "pathalign"
SKIP = {"pathalign.__main__"}  # running it is what importing it does


def package_modules(src: Path = SRC) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is_package) for every module of the package (under ``src``)."""
    mods = {}
    for path in sorted((src / "pathalign").rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return mods


def _runtime_imports(tree: ast.AST):
    """Import nodes that run (anywhere, functions included), skipping ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph(src: Path = SRC, named: bool = True) -> dict[str, set[str]]:
    """Module -> the package modules its import statements name (``from .m import x`` -> ``m.x`` if a module),
    and with ``named`` those it imports by name through importlib (:func:`_named_imports`)."""
    mods = package_modules(src)
    graph = {}
    for name, (path, is_pkg) in mods.items():
        pkg = name if is_pkg else name.rpartition(".")[0]
        targets = set()
        for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name in mods}
                continue
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                if f"{module}.{alias.name}" in mods:
                    targets.add(f"{module}.{alias.name}")
                elif module in mods:
                    targets.add(module)
        graph[name] = (targets | (_named_imports(path, pkg, mods) if named else set())) - {name}
    return graph


def _named_imports(path: Path, pkg: str, mods) -> set[str]:
    """Modules imported by name through ``importlib``: a string constant that is a module's absolute name
    (the verb table: ``Verb("pathalign.cli.train", ...)``), and the values of a ``_LAZY`` table (PEP 562
    lazy names: ``{"SlideEncoder": ".slide_encoder"}``, relative to the package)."""
    tree = ast.parse(path.read_text(), str(path))
    found = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
             and "." in n.value and n.value in mods}
    for node in ast.walk(tree):
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
        if isinstance(target, ast.Name) and target.id == "_LAZY" and isinstance(node.value, ast.Dict):
            for v in node.value.values:
                rel = v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else None
                if rel is None:
                    continue
                level = len(rel) - len(rel.lstrip("."))
                base = pkg.split(".")[: len(pkg.split(".")) - level + 1] if level else []
                found.add(".".join(base + [rel.lstrip(".")]) if level else rel)
    return found


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


# Import cycles accepted for now (none); an entry that no longer is a cycle fails test_known_cycles_are_real.
KNOWN: list[list[str]] = []


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert import_cycles(graph) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_graph_sees_function_level_imports():
    graph = import_graph(named=False)
    verbs = {f"pathalign.cli.{v.replace('-', '_')}" for v in VERBS}
    # pathalign.cli imports the verb modules only through importlib, never by statement
    assert not graph["pathalign.cli"] & verbs, graph["pathalign.cli"]
    assert not {m for m in graph["pathalign.cli"] if m.startswith("pathalign.") and not m.startswith("pathalign.cli.")
                and m not in ("pathalign", "pathalign.errors", "pathalign.devices")}, graph["pathalign.cli"]
    # a function-level import (``from .outputs import ...`` inside preflight) is an edge
    assert "pathalign.cli.outputs" in graph["pathalign.cli"]
    assert "pathalign.devices" in graph["pathalign.cli"]


def _imports_argparse(tree: ast.AST) -> bool:
    for node in ast.walk(tree):  # anywhere: module level, functions, TYPE_CHECKING blocks
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "argparse" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "argparse":
            return True
    return False


def test_argparse_only_in_the_cli_package():
    """The command line is pathalign.cli's alone: library modules take typed parameters, never a Namespace."""
    outside = [name for name, (path, _) in package_modules().items()
               if name != "pathalign.cli" and not name.startswith("pathalign.cli.")
               and _imports_argparse(ast.parse(path.read_text(), str(path)))]
    assert not outside, f"modules outside pathalign.cli that import argparse: {outside}"


def test_the_argparse_check_finds_a_planted_import():
    for code in ("import argparse", "def f():\n    from argparse import Namespace",
                 "if TYPE_CHECKING:\n    import argparse as ap"):
        assert _imports_argparse(ast.parse(code)), code
    assert not _imports_argparse(ast.parse("import argparser\nfrom .argparse import x"))


def test_known_cycles_are_real():
    cycles = import_cycles(import_graph())
    stale = [c for c in KNOWN if c not in cycles]
    assert not stale, f"KNOWN lists cycles that no longer exist (remove them): {stale}"


def test_no_new_import_cycles():
    cycles = [c for c in import_cycles(import_graph()) if c not in KNOWN]
    assert not cycles, f"import cycles (module-level or function-level imports): {cycles}"


def test_no_import_cycles_at_all():
    assert not import_cycles(import_graph())


# The layers, low to high: a module may import its own package and the packages of lower layers only;
# packages of one layer do not import each other. Every package (and top-level module) must be listed.
LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("registry", "geometry", "modalities", "devices", "hiding"),  # foundations: nothing of ours but errors
    ("distributed",),  # process groups, over devices
    ("io",),  # every file format: features, embeddings, cohort folder, model folder, checkpoints, Hub
    # the stages before training and the model, each on io alone: slides, cohort (build and model-ready
    # view), models (with their state: molecular preprocessing), synth (the synthetic cohort in real formats)
    ("slides", "cohort", "models", "synth"),
    ("train",),
    ("evaluate",),
    ("viewer",),  # shows what evaluate computes (heatmaps)
    ("pathalign",),  # the package itself: the public names, loaded lazily (importlib, not statements)
    ("demo",),
    ("cli",),  # the verbs, each imported by name through importlib
    ("__main__",),
]
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def package_of(module: str) -> str:
    """``pathalign.models.siglip`` -> ``models``; the top-level module ``pathalign`` -> ``pathalign``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


# old import paths users may hold, kept as deprecated aliases: (old module, new module, a name both give);
# an alias may import its new module across the layers (that one edge only), and must warn
ALIASES = [
    ("pathalign.slides.features_io", "pathalign.io.features", "read_patch_features"),
    ("pathalign.cohort.preprocess", "pathalign.models.preprocessing", "make_transform"),
]


def layering_violations(graph: dict[str, set[str]], rank: dict[str, int] = RANK,
                        aliases: list[tuple[str, str, str]] = ALIASES) -> list[str]:
    """Every import of ``graph`` that climbs (or crosses within) a layer, and every package not in ``rank``."""
    exempt = {(old, new) for old, new, _ in aliases}
    out = sorted({f"{package_of(m)} is in no layer (add it to LAYERS)" for m in graph if package_of(m) not in rank})
    for m, targets in sorted(graph.items()):
        a = package_of(m)
        for t in sorted(targets):
            b = package_of(t)
            if a == b or (m, t) in exempt or a not in rank or b not in rank:
                continue
            if rank[b] >= rank[a]:
                out.append(f"{m} -> {t} ({a}, layer {rank[a]}, imports {b}, layer {rank[b]})")
    return out


def test_layering_finds_a_planted_upward_edge():
    graph = {"pathalign.models.x": {"pathalign.train.y", "pathalign.io.z", "pathalign.models.w"},
             "pathalign.train.y": {"pathalign.models.x"}, "pathalign.io.z": set(), "pathalign.models.w": set()}
    assert layering_violations(graph) == ["pathalign.models.x -> pathalign.train.y (models, layer 4, imports train, "
                                          "layer 5)"]
    # one layer's packages do not import each other; an unknown package is reported
    assert layering_violations({"pathalign.models.a": {"pathalign.cohort.b"}, "pathalign.cohort.b": set()}) == [
        "pathalign.models.a -> pathalign.cohort.b (models, layer 4, imports cohort, layer 4)"]
    assert layering_violations({"pathalign.newpkg.a": {"pathalign.errors"}, "pathalign.errors": set()}) == [
        "newpkg is in no layer (add it to LAYERS)"]
    # an alias may import its new module, nothing else above it
    alias = [("pathalign.cohort.old", "pathalign.models.new", "x")]
    assert not layering_violations({"pathalign.cohort.old": {"pathalign.models.new"}}, aliases=alias)
    assert layering_violations({"pathalign.cohort.old": {"pathalign.models.other"}}, aliases=alias)


def test_no_import_climbs_the_layers():
    """Module-level and function-level imports alike; the only exemptions are the deprecated aliases' own edges."""
    violations = layering_violations(import_graph())
    assert not violations, "imports that climb the layers:\n" + "\n".join(violations)


def test_every_layer_entry_is_a_real_package():
    """A LAYERS entry with no package or module behind it fails: a removed package must leave the table, so
    that a new one of the same name is placed on purpose."""
    present = {package_of(m) for m in package_modules()}
    stale = [p for layer in LAYERS for p in layer if p not in present]
    assert not stale, f"LAYERS lists packages that do not exist (remove them): {stale}"


def test_the_graph_sees_lazy_tables_and_the_verb_table(tmp_path):
    graph = import_graph()
    assert "pathalign.models.slide_encoder" in graph["pathalign.models"]  # models/__init__'s _LAZY
    assert "pathalign.models.pathalign_model" in graph["pathalign"]  # pathalign/__init__'s _LAZY
    assert "pathalign.cli.train" in graph["pathalign.cli"]  # VERBS: Verb("pathalign.cli.train", ...)
    planted = "_LAZY = {'X': '..train.trainer'}"
    mods = {"pathalign.models.m": None, "pathalign.train.trainer": None}
    path = tmp_path / "planted_lazy.py"
    path.write_text(planted)
    edges = _named_imports(path, "pathalign.models", mods)
    assert edges == {"pathalign.train.trainer"}
    assert layering_violations({"pathalign.models.m": edges}) == [
        "pathalign.models.m -> pathalign.train.trainer (models, layer 4, imports train, layer 5)"]


def test_every_alias_is_real():
    """An entry of ALIASES whose module is gone, or no longer imports its new module, fails (as KNOWN does)."""
    graph = import_graph()
    stale = [(old, new) for old, new, _ in ALIASES if new not in graph.get(old, set())]
    assert not stale, f"ALIASES lists modules that are not aliases (remove them): {stale}"


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(SRC)}


def test_every_module_imports_alone():
    """Each module imported with no other ``pathalign`` module loaded (third-party packages cached)."""
    names = [m for m in package_modules() if m not in SKIP]
    script = f"""
import importlib, json, sys, traceback, warnings
warnings.simplefilter("ignore")
import torch, numpy, pandas  # cached: only our own modules are re-imported each time
failures = {{}}
for name in {names!r}:
    for loaded in [m for m in sys.modules if m == "pathalign" or m.startswith("pathalign.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failures[name] = traceback.format_exc(limit=-3)
print(json.dumps(failures))
"""
    proc = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    failures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not failures, "\n".join(f"{k}:\n{v}" for k, v in failures.items())


# the modules whose cycles were hidden by lazy imports, and the entry points
FRESH = ["pathalign.models.exaone", "pathalign.models.slide_encoder", "pathalign.evaluate.plots",
         "pathalign.evaluate.bench", "pathalign.cli", "pathalign"]


def test_fresh_interpreter_imports():
    procs = {m: subprocess.Popen([sys.executable, "-c", f"import {m}"], env=_env(), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for m in FRESH}
    errors = {}
    for m, p in procs.items():
        _, err = p.communicate(timeout=300)
        if p.returncode:
            errors[m] = err
    assert not errors, errors


def test_the_deprecated_encoders_module_warns_and_still_works():
    import importlib
    import sys
    import warnings

    sys.modules.pop("pathalign.slides.encoders", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = importlib.import_module("pathalign.slides.encoders")
    from pathalign.slides.patch_encoders import build_patch_encoder

    assert any(issubclass(w.category, DeprecationWarning) and "patch_encoders" in str(w.message) for w in caught)
    assert old.build_patch_encoder is build_patch_encoder


def test_the_package_version_is_the_one_pyproject_declares():
    import tomllib

    import pathalign

    declared = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["version"]
    assert pathalign.__version__ == declared



def test_the_deprecated_aliases_warn_and_still_work():
    import importlib
    import warnings

    for old_name, new_name, attr in ALIASES:
        sys.modules.pop(old_name, None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            old = importlib.import_module(old_name)
        new = importlib.import_module(new_name)
        assert any(issubclass(w.category, DeprecationWarning) and new_name in str(w.message) for w in caught), old_name
        assert getattr(old, attr) is getattr(new, attr)
