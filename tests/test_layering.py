"""No module of deepframe imports from a layer above its own.

Data flows one way (docs/concepts.md, STYLE.md): graph -> dictionary ->
pursuit -> attacks/train -> analysis. :data:`LAYERS` below is that order,
lowest first, written out so a reader sees it; a module may import from its
own member of the table and from members of lower layers, never from a higher
layer and never from another member of its own layer (members of one layer
are independent of each other).

How the imports are found: every ``.py`` file under ``deepframe/`` is parsed
with :mod:`ast` and *every* ``import`` / ``from ... import`` statement in it
counts, wherever it stands -- at module level, inside a function (the lazy
imports that keep ``import deepframe`` light), and inside an
``if TYPE_CHECKING:`` block. A ``TYPE_CHECKING`` import counts because an
annotation naming a class of a higher layer is still a dependency on that
layer: the lower module cannot be read, typed or moved without the higher
one. Relative imports are resolved against the importing module's package;
``from deepframe import NAME`` is resolved to the module that defines NAME
(``deepframe._EXPORTS``) or to the submodule NAME. Imports made from strings
(``importlib.import_module``, as the root's lazy ``__getattr__`` and
``module:factory`` loading do) are not seen.

A package (``deepframe/ops/``, ``deepframe/geometry/``, ``deepframe/cli/``,
...) is one member: its modules may import each other freely, and its layer
is theirs. ``deepframe/__init__.py`` (the public names, re-exported from
every layer) and ``deepframe/__main__.py`` (the command) are exempt.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "deepframe"

#: The layers, lowest first: (what the layer is, its members). A member is a module or a
#: package of ``deepframe`` (``"geometry"`` is ``deepframe/geometry/`` and all it holds).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("private utilities (files, devices) and the version", ("", "_io", "_device", "_inputs")),
    ("the operators of the edge kinds and their registry", ("ops",)),
    ("architecture graphs", ("graph",)),
    ("the residual terms of a graph", ("terms",)),
    ("memory estimates of the terms", ("memory",)),
    ("the global dictionary D", ("dictionary",)),
    ("what is computed from D: its geometry, the pursuit over it", ("geometry", "solvers")),
    ("compile(): the pursuit as a network", ("pursuit",)),
    (
        "around a compiled network: files, accelerators, attacks, data",
        (
            "checkpoints",
            "accel",
            "attacks",
            "data",
        ),
    ),  # fmt: skip
    ("reading torch models; the training loop's machinery", ("interop", "training")),
    ("the training loop", ("train",)),
    ("the paper's experiments end to end", ("experiments",)),
    ("helpers for users' tests", ("testing",)),
    ("the deepframe command", ("cli",)),
)

#: Files that may import from any layer.
EXEMPT = ("__init__.py", "__main__.py")

#: TEMPORARY: upward imports that exist today in files this test's author could not edit,
#: as (importing file relative to deepframe/, imported member). Each is a bug to fix by
#: moving code to the layer it belongs to; then remove its entry. Keep this empty.
TEMPORARY_ALLOWED_UPWARD_IMPORTS: frozenset[tuple[str, str]] = frozenset()

_LAYER_OF = {member: i for i, (_, members) in enumerate(LAYERS) for member in members}


def _module_name(path: Path) -> str:
    """``deepframe/geometry/report.py`` -> ``"deepframe.geometry.report"``."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str) -> bool:
    """Whether the dotted ``deepframe...`` name is a module or package of the source tree."""
    base = PACKAGE.parent.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _exports() -> dict[str, str]:
    """``deepframe._EXPORTS`` read from the source: public name -> defining module."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in targets):
            return ast.literal_eval(node.value)
    return {}


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import of a ``deepframe`` module in ``path``, resolved."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    exports = _exports()
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                child = f"{target}.{alias.name}"
                if _is_module(child):
                    found.append((node.lineno, child))
                elif target == "deepframe" and alias.name in exports:
                    found.append((node.lineno, f"deepframe.{exports[alias.name]}"))
                else:
                    found.append((node.lineno, target))
    return [(line, module) for line, module in found if module.split(".")[0] == "deepframe"]


def _member(module: str) -> str:
    """The table member a ``deepframe`` module belongs to: ``deepframe.cli.app`` -> ``"cli"``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _sources() -> list[Path]:
    return sorted(
        p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).as_posix() not in EXEMPT
    )


def _describe(member: str) -> str:
    layer = _LAYER_OF[member]
    return f"layer {layer} ({LAYERS[layer][0]})"


def upward_imports(paths: list[Path]) -> list[str]:
    """One message per import of ``paths`` that runs up (or sideways) the layers."""
    problems = []
    for path in paths:
        source = path.relative_to(PACKAGE).as_posix()
        importer = _member(_module_name(path))
        for line, module in _imports(path):
            imported = _member(module)
            if imported == importer or imported not in _LAYER_OF or importer not in _LAYER_OF:
                continue  # within one member; unknown members fail test_every_module_has_a_layer
            if _LAYER_OF[imported] < _LAYER_OF[importer]:
                continue
            if (source, imported) in TEMPORARY_ALLOWED_UPWARD_IMPORTS:
                continue
            way = "a higher" if _LAYER_OF[imported] > _LAYER_OF[importer] else "its own"
            problems.append(
                f"deepframe/{source}:{line} imports {module}, from {way} layer: "
                f"{importer or 'deepframe'} is in {_describe(importer)}, "
                f"{imported or 'deepframe'} in {_describe(imported)}"
            )
    return problems


def test_every_module_has_a_layer():
    """A new module or package is placed in the table on purpose, not by default."""
    missing = sorted(
        {_member(_module_name(p)) for p in _sources()} - set(_LAYER_OF),
    )
    assert not missing, (
        f"deepframe modules without a layer: {', '.join(missing)}: add each to LAYERS in "
        "tests/test_layering.py, in the layer of what it imports and what imports it"
    )


def test_the_table_names_only_modules_that_exist():
    stale = [m for m in _LAYER_OF if m and not _is_module(f"deepframe.{m}")]
    assert not stale, f"LAYERS names modules that do not exist: {', '.join(stale)}"


def test_the_temporary_allow_list_is_still_needed():
    """An entry whose import is gone is removed, so the list only shrinks."""
    seen = {
        (p.relative_to(PACKAGE).as_posix(), _member(m)) for p in _sources() for _, m in _imports(p)
    }
    assert TEMPORARY_ALLOWED_UPWARD_IMPORTS <= seen, sorted(TEMPORARY_ALLOWED_UPWARD_IMPORTS - seen)


def test_no_module_imports_from_a_higher_layer():
    problems = upward_imports(_sources())
    assert not problems, "imports against the layering:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("code", "imported"),
    [
        ("from ..cli import main\n", "deepframe.cli"),  # the old geometry -> cli circle
        ("def f():\n    from ..train import train\n", "deepframe.train"),  # inside a function
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from deepframe.pursuit import PursuitNet\n",
            "deepframe.pursuit",
        ),
        ("from .. import compile\n", "deepframe.pursuit"),  # a public name of the root
        ("import deepframe.experiments.stats\n", "deepframe.experiments.stats"),
        ("from .. import solvers\n", "deepframe.solvers"),  # a peer of geometry's layer
    ],
)
def test_an_upward_import_is_named_with_its_file_and_line(tmp_path, monkeypatch, code, imported):
    """The check itself: a geometry module importing upwards fails, naming file and line."""
    fake = tmp_path / "deepframe"
    for name in (
        "pursuit.py", "train.py", "solvers.py", "cli/__init__.py", "experiments/__init__.py",
        "experiments/stats.py", "geometry/__init__.py",
    ):  # fmt: skip
        (fake / name).parent.mkdir(parents=True, exist_ok=True)
        (fake / name).write_text("")
    (fake / "__init__.py").write_text((PACKAGE / "__init__.py").read_text())  # its _EXPORTS
    bad = fake / "geometry" / "report.py"
    bad.write_text('"""A report."""\n\nimport math\n' + code)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    (problem,) = upward_imports([bad])
    line = 4 + code.count("\n") - 1
    assert problem.startswith(f"deepframe/geometry/report.py:{line} imports {imported},")
