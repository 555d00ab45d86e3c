"""The layers of the code: no import runs from a lower layer to a higher one (#23).

Every module of ``lungseg``, ``components`` and ``pipelines`` is parsed with :mod:`ast` — imports inside
functions included (lungseg imports heavy libraries lazily, and a lazy import is a dependency all the
same) — and each import of another unit is checked against :data:`LAYERS`: a unit may import its own
modules and units of *strictly lower* layers only. Units of one layer are peers and never import each
other (that is what kept training and inference from depending on each other before ``artifacts``).
A new top-level module or package must be given its layer here (the test names it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: (layer, units, why) from the top down; a unit is ``pipelines``, ``components``, or a top-level
#: module or package of ``lungseg`` (``lungseg`` itself: its ``__init__``, the version)
LAYERS: list[tuple[int, tuple[str, ...], str]] = [
    (13, ("pipelines",), "the KFP pipeline and its `lungseg pipeline` subcommand: wires the components"),
    (12, ("components",), "the KFP components: each calls one library stage inside its container"),
    (11, ("__main__",), "`python -m lungseg`: runs the command line"),
    (10, ("cli",), "the command line: parses arguments, calls the library, configures logging, prints errors"),
    (9, ("experiments",), "the experiment runner: trains then evaluates each row of a results table"),
    (8, ("training", "evaluation", "inference", "registry"), "the stages: each stands alone on the floors below"),
    (7, ("data",), "reading, validating and preprocessing the data every stage reads"),
    (6, ("lineage",), "where the data came from (raw versions, KFP run context), recorded by data and the stages"),
    (5, ("artifacts",), "what training writes and the others read: checkpoints, mlflow_run.json, the portable model"),
    (4, ("config",), "params.yaml: knows the model and loss names and options it checks"),
    (3, ("models", "losses", "metrics"), "the networks, the losses and the metrics: torch code, no I/O of lungseg's"),
    (2, ("io", "tracking"), "atomic file writes; the MLflow connection (resilient runs, portable URIs)"),
    (1, ("provenance", "envvars"), "hashes and the code's version; environment variables set and restored"),
    (0, ("errors", "lungseg"), "the one-line error types and the package version: imported by everything"),
]
LAYER = {unit: layer for layer, units, _ in LAYERS for unit in units}
TOP = ("lungseg", "components", "pipelines")


def _units() -> set[str]:
    pkg = REPO / "lungseg"
    return {p.stem for p in pkg.glob("*.py") if p.stem != "__init__"} | {
        p.name for p in pkg.iterdir() if (p / "__init__.py").is_file()
    }


def unit_of(module: str, units: set[str]) -> str:
    """``lungseg.training.loop`` → ``training``; ``lungseg`` / ``lungseg.__version__`` → ``lungseg``;
    ``components.stages`` → ``components``."""
    parts = module.split(".")
    if parts[0] != "lungseg":
        return parts[0]
    return parts[1] if len(parts) > 1 and parts[1] in units else "lungseg"


def imported(tree: ast.AST) -> list[tuple[int, str]]:
    """Every absolute import of ``lungseg``/``components``/``pipelines`` in ``tree`` (at any depth:
    inside functions too) as ``(line, module)``; ``from lungseg import x`` counts as ``lungseg.x``."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module in TOP:
                out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, node.module))
    return [(line, m) for line, m in out if m.split(".")[0] in TOP]


def violations(repo: Path = REPO) -> list[str]:
    units = _units()
    found = []
    for top in TOP:
        for path in sorted((repo / top).rglob("*.py")):
            rel = path.relative_to(repo)
            mod = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
            src = unit_of(mod, units)
            for line, target in imported(ast.parse(path.read_text(encoding="utf-8"), str(rel))):
                dst = unit_of(target, units)
                if dst == src:
                    continue
                missing = [u for u in (src, dst) if u not in LAYER]
                if missing:
                    found.append(f"{rel}:{line}: {', '.join(missing)} has no layer in tests/test_layers.py")
                elif LAYER[dst] >= LAYER[src]:
                    how = "a peer" if LAYER[dst] == LAYER[src] else "a higher layer"
                    found.append(f"{rel}:{line}: {src} (layer {LAYER[src]}) imports {target}, {how} ({LAYER[dst]})")
    return found


def test_no_import_runs_from_a_lower_layer_to_a_higher_one():
    assert violations() == []


def test_every_unit_has_one_layer():
    named = [unit for _, units, _ in LAYERS for unit in units]
    assert len(named) == len(set(named)), "a unit is in two layers"
    assert {"pipelines", "components", "lungseg"} | _units() <= set(named)


def test_an_upward_import_is_found_inside_a_function(tmp_path):
    """The check sees lazy imports: a function of ``artifacts`` importing ``training`` (the cycle that
    ``lungseg.artifacts`` ended) and ``training`` importing a peer are both reported."""
    tree = ast.parse("def f():\n    from lungseg.training.loop import train\n    import lungseg.inference.predict\n")
    assert imported(tree) == [(2, "lungseg.training.loop"), (3, "lungseg.inference.predict")]
    units = _units()
    assert LAYER[unit_of("lungseg.training.loop", units)] > LAYER["artifacts"]
    assert LAYER[unit_of("lungseg.inference.predict", units)] == LAYER["training"]  # peers: refused too


@pytest.mark.parametrize(
    ("module", "unit"),
    [("lungseg", "lungseg"), ("lungseg.__version__", "lungseg"), ("lungseg.io", "io"), ("components.x", "components")],
)
def test_unit_of(module, unit):
    assert unit_of(module, _units()) == unit
