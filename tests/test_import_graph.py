"""The package's import graph: no import cycles, and nothing below the commands imports them.

Every module of the package is parsed with :mod:`ast`, the way ``pyproject.toml`` installs it:
``npu_retu/`` as ``npu_retu.*``, ``kernels/`` as ``npu_retu.kernels.*``, ``configs/`` as
``npu_retu.configs``. An edge A -> B means module A imports package-internal module B. The rules:

* **Every import counts, wherever it is**: at the top of a module, inside a function (the package
  imports lazily a lot, to keep ``npu-retu --help`` fast), under ``if TYPE_CHECKING:``. A lazy import
  cannot fail at import time, but it is still a dependency: "imports go down" (DESIGN.md) holds for
  all of them.
* ``import a.b.c`` and ``from a.b.c import x`` depend on ``a.b.c``; ``from a.b import c`` depends on
  ``a.b.c`` when that is a module, else on ``a.b``. Relative imports are resolved first.
* **Importing a module runs the ``__init__`` of every package above it**, so ``from a.b.c import x``
  also depends on ``a.b`` (and ``a``): a package ``__init__`` that imports its submodules makes those
  a dependency of everyone who imports anything from the package.
* **A module's own enclosing packages are not edges.** Python starts importing ``a`` and ``a.b``
  before the body of ``a.b.c`` runs, so ``a.b.c`` importing ``a.b`` (explicitly, or implicitly
  through a sibling ``a.b.d``) adds no ordering: the common pattern "a package's ``__init__``
  re-exports its submodules, and a submodule imports a helper from the package" is not a cycle.
  A package ``__init__`` importing its own submodules is an ordinary edge (``a.b -> a.b.c``), so
  a real cycle through the ``__init__`` (``a.b -> a.b.c -> a.b.d -> a.b.c``) is still found.
* The root ``npu_retu/__init__.py`` encloses every module, so it is never an edge target.
* Imports of a name held in a string (``importlib.import_module``) are not seen: ``npu_retu.cli``
  loads the one command it runs that way, and ``npu_retu.data`` its lazy attributes (its own
  own submodules).

A failing test lists every cycle (as module names, first = last) or every offending import
(``file:line: module imports target``).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "npu_retu"

# folder on disk -> the package it is installed as (pyproject.toml, [tool.setuptools] package-dir)
SOURCE_ROOTS = {"npu_retu": "npu_retu", "kernels": "npu_retu.kernels", "configs": "npu_retu.configs"}

COMMANDS = "npu_retu.commands"
# the layers under the commands (DESIGN.md: commands -> experiments -> trainer -> (algos, rollout, ...))
BELOW_COMMANDS = ("npu_retu.trainer", "npu_retu.experiments", "npu_retu.algos", "npu_retu.rollout", "npu_retu.engine")
ALLOWED_TO_IMPORT_COMMANDS = ("npu_retu.commands", "npu_retu.cli")


# ------------------------------------------------------------------------------------------------
# building the graph


def module_sources(root: Path = ROOT) -> dict[str, tuple[str, str, bool]]:
    """module name -> (source, path for messages, is a package ``__init__``) for every ``.py``
    file of the package."""
    modules: dict[str, tuple[str, str, bool]] = {}
    for folder, package in SOURCE_ROOTS.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = path.relative_to(root / folder).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            name = ".".join((package, *(parts[:-1] if is_package else parts)))
            modules[name] = (path.read_text(encoding="utf-8"), path.relative_to(root).as_posix(), is_package)
    return modules


def _is_under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _ancestors(name: str) -> list[str]:
    """``a.b.c`` -> [``a``, ``a.b``]."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    package = module if is_package else module.rpartition(".")[0]
    base = package.split(".")
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imported_modules(module: str, source: str, is_package: bool, known: set[str]) -> list[tuple[str, int]]:
    """(imported package-internal module, line) for every import statement in ``source``, anywhere
    in it, including the packages each import runs on the way (see the module docstring)."""
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(source)):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_relative(module, is_package, node.level, node.module) if node.level else (node.module or "")
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.append(submodule if submodule in known else base)
        for target in targets:
            if not _is_under(target, PACKAGE):
                continue
            for name in (*_ancestors(target), target):
                if name in known:
                    found.append((name, node.lineno))
    own_packages = set(_ancestors(module)) | ({module} if is_package else set())
    return [(target, line) for target, line in found if target not in own_packages and target != module]


def import_graph(modules: dict[str, tuple[str, str, bool]]) -> dict[str, dict[str, int]]:
    """module -> {imported module: first line that imports it} for ``modules`` (as
    :func:`module_sources` returns them)."""
    known = set(modules)
    graph: dict[str, dict[str, int]] = {}
    for name, (source, _, is_package) in modules.items():
        edges: dict[str, int] = {}
        for target, line in sorted(imported_modules(name, source, is_package, known), key=lambda edge: edge[1]):
            edges.setdefault(target, line)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan), each as a
    list of module names from its alphabetically first module back to it (first = last); a
    shortest such cycle, so the message names as few modules as it can."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0

    for start in sorted(graph):
        if start in index:
            continue
        # iterative Tarjan: (node, iterator over its successors)
        work = [(start, iter(sorted(graph.get(start, {}))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for succ in successors:
                if succ not in graph:
                    continue
                if succ not in index:
                    index[succ] = low[succ] = counter
                    counter += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph.get(succ, {})))))
                    advanced = True
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, {}):
                    components.append(sorted(component))

    cycles = []
    for component in sorted(components):
        members = set(component)
        first = component[0]
        # breadth-first from `first` inside the component back to `first`
        previous: dict[str, str] = {}
        frontier = [first]
        seen = {first}
        closing = None
        while frontier and closing is None:
            following = []
            for node in frontier:
                for succ in sorted(graph[node]):
                    if succ == first:
                        closing = node
                        break
                    if succ in members and succ not in seen:
                        seen.add(succ)
                        previous[succ] = node
                        following.append(succ)
                if closing is not None:
                    break
            frontier = following
        path = [closing]
        while path[-1] != first:
            path.append(previous[path[-1]])
        cycles.append([*reversed(path), first])
    return cycles


def imports_into(graph: dict[str, dict[str, int]], modules: dict[str, tuple[str, str, bool]], target_prefix: str,
                 importers) -> list[str]:
    """``file:line: importer imports target`` for every edge from a module ``importers(name)``
    accepts into ``target_prefix`` (the package or anything under it)."""
    offenders = []
    for name in sorted(graph):
        if not importers(name):
            continue
        for target, line in sorted(graph[name].items()):
            if _is_under(target, target_prefix):
                offenders.append(f"{modules[name][1]}:{line}: {name} imports {target}")
    return offenders


# ------------------------------------------------------------------------------------------------
# the package


_MODULES = module_sources()
_GRAPH = import_graph(_MODULES)


def test_the_scan_covers_the_package():
    assert {"npu_retu", "npu_retu.cli", "npu_retu.config", "npu_retu.configs", "npu_retu.kernels",
            "npu_retu.kernels.logprobs", "npu_retu.kernels.triton.logprobs", "npu_retu.commands.plan",
            "npu_retu.trainer.pipeline"} <= set(_MODULES)
    on_disk = sum(1 for folder in SOURCE_ROOTS for _ in (ROOT / folder).rglob("*.py"))
    assert len(_MODULES) == on_disk
    # lazy imports count: the cli imports nothing of commands at the top, but plan's command does
    assert "npu_retu.plan" in _GRAPH["npu_retu.commands.plan"]
    assert "npu_retu.report.plan_text" in _GRAPH["npu_retu.commands.plan"]  # inside run()


def describe_cycles(cycles: list[list[str]], graph: dict[str, dict[str, int]], modules) -> str:
    """Each cycle on a line, then the import that makes each of its steps (``file:line``; a step
    into a package names the submodule whose import runs the package's ``__init__``)."""
    lines = []
    for cycle in cycles:
        lines.append("  " + " -> ".join(cycle))
        for a, b in zip(cycle, cycle[1:]):
            line = graph[a][b]
            via = next((t for t, at in sorted(graph[a].items()) if t.startswith(b + ".") and at == line), None)
            lines.append(f"    {modules[a][1]}:{line}: {a} imports {b}" + (f" (via {via})" if via else ""))
    return "\n".join(lines)


def test_no_import_cycles():
    cycles = find_cycles(_GRAPH)
    assert not cycles, ("import cycles among the package's modules (top-level and function-level imports; one "
                        "shortest cycle per tangle):\n" + describe_cycles(cycles, _GRAPH, _MODULES))


def test_nothing_below_the_commands_imports_them():
    offenders = imports_into(_GRAPH, _MODULES, COMMANDS, lambda name: any(_is_under(name, p) for p in BELOW_COMMANDS))
    assert not offenders, (
        f"{', '.join(BELOW_COMMANDS)} must not import {COMMANDS} (commands parse, call and print; "
        "printers and report writers live in npu_retu.report):\n" + "\n".join(offenders)
    )


def test_only_the_cli_imports_the_commands():
    offenders = imports_into(_GRAPH, _MODULES, COMMANDS,
                             lambda name: not any(_is_under(name, p) for p in ALLOWED_TO_IMPORT_COMMANDS))
    assert not offenders, (
        f"only {' and '.join(ALLOWED_TO_IMPORT_COMMANDS)} may import {COMMANDS}; move what these need out of "
        "the commands:\n" + "\n".join(offenders)
    )


def test_every_package_folder_is_installed():
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"])
    packages = {name for name, (_, _, is_package) in _MODULES.items() if is_package}
    assert packages <= listed, f"package folders missing from pyproject.toml's packages: {sorted(packages - listed)}"


# ------------------------------------------------------------------------------------------------
# the graph functions on made-up packages (so a failure above is believable)


def _modules_of(sources: dict[str, str]) -> dict[str, tuple[str, str, bool]]:
    """:func:`module_sources` for made-up files: name (``pkg.__init__`` for a package) -> source."""
    return {name.removesuffix(".__init__"): (text, f"{name}.py", name.endswith(".__init__")) for name, text in sources.items()}


def test_a_cycle_through_function_level_imports_is_found():
    graph = import_graph(_modules_of({
        "npu_retu.__init__": "",
        "npu_retu.config": "def load():\n    from npu_retu.algos.presets import PRESETS\n",
        "npu_retu.algos.__init__": "",
        "npu_retu.algos.presets": "from npu_retu.algos.config import AlgoConfig\n",
        "npu_retu.algos.config": "from npu_retu.config import AlgoConfig\n",
        "npu_retu.flops": "import math\nfrom npu_retu import config\n",
    }))
    cycles = find_cycles(graph)
    assert cycles == [["npu_retu.algos.config", "npu_retu.config", "npu_retu.algos.presets", "npu_retu.algos.config"]]
    names = _modules_of({"npu_retu.algos.config": "", "npu_retu.config": "", "npu_retu.algos.presets": ""})
    assert describe_cycles(cycles, graph, names) == (
        "  npu_retu.algos.config -> npu_retu.config -> npu_retu.algos.presets -> npu_retu.algos.config\n"
        "    npu_retu.algos.config.py:1: npu_retu.algos.config imports npu_retu.config\n"
        "    npu_retu.config.py:2: npu_retu.config imports npu_retu.algos.presets\n"
        "    npu_retu.algos.presets.py:1: npu_retu.algos.presets imports npu_retu.algos.config"
    )
    assert graph["npu_retu.config"] == {"npu_retu.algos": 2, "npu_retu.algos.presets": 2}  # the package's __init__ runs too
    assert graph["npu_retu.flops"] == {"npu_retu.config": 2}  # `from npu_retu import config` is the module


def test_a_package_init_and_its_submodules_are_not_a_cycle():
    graph = import_graph(_modules_of({
        "npu_retu.__init__": "",
        "npu_retu.kernels.__init__": "from npu_retu.kernels.reference import ref\n"
                                     "def fused():\n    from npu_retu.kernels.fused import f\n",
        "npu_retu.kernels.reference": "from npu_retu.kernels import helpers\n",
        "npu_retu.kernels.fused": "from npu_retu.kernels import implementation_status\nfrom .reference import ref\n"
                                  "from . import helpers\n",
        "npu_retu.kernels.helpers": "",
    }))
    assert find_cycles(graph) == []
    assert graph["npu_retu.kernels"] == {"npu_retu.kernels.reference": 1, "npu_retu.kernels.fused": 3}
    # relative imports resolved; the import of its own package (line 1) is no edge
    assert graph["npu_retu.kernels.fused"] == {"npu_retu.kernels.reference": 2, "npu_retu.kernels.helpers": 3}
    assert graph["npu_retu.kernels.reference"] == {"npu_retu.kernels.helpers": 1}


def test_a_cycle_through_a_package_init_is_found():
    graph = import_graph(_modules_of({
        "npu_retu.__init__": "",
        "npu_retu.monitor.__init__": "from npu_retu.monitor.online import PhaseMonitor\n",
        "npu_retu.monitor.online": "from npu_retu.report.plots import plot\n",
        "npu_retu.report.__init__": "",
        "npu_retu.report.plots": "from npu_retu.monitor.phases import PhaseReport\n",  # runs monitor/__init__ first
        "npu_retu.monitor.phases": "",
    }))
    cycles = find_cycles(graph)
    assert cycles == [["npu_retu.monitor", "npu_retu.monitor.online", "npu_retu.report.plots", "npu_retu.monitor"]]
    assert describe_cycles(cycles, graph, _modules_of({"npu_retu.monitor.__init__": "", "npu_retu.monitor.online": "",
                                                       "npu_retu.report.plots": ""})).splitlines()[-1] == (
        "    npu_retu.report.plots.py:1: npu_retu.report.plots imports npu_retu.monitor (via npu_retu.monitor.phases)"
    )


def test_imports_of_the_commands_are_reported_with_file_and_line():
    modules = _modules_of({
        "npu_retu.__init__": "",
        "npu_retu.cli": "import importlib\nfrom npu_retu.commands import sft\n",
        "npu_retu.commands.__init__": "",
        "npu_retu.commands.sft": "def summary():\n    pass\n",
        "npu_retu.trainer.__init__": "",
        "npu_retu.trainer.pipeline": "import json\n\n\ndef run():\n    from npu_retu.commands.sft import summary\n",
        "npu_retu.report.__init__": "",
        "npu_retu.report.text": "import npu_retu.commands\n",
    })
    graph = import_graph(modules)
    below = imports_into(graph, modules, COMMANDS, lambda name: any(_is_under(name, p) for p in BELOW_COMMANDS))
    assert below == ["npu_retu.trainer.pipeline.py:5: npu_retu.trainer.pipeline imports npu_retu.commands",
                     "npu_retu.trainer.pipeline.py:5: npu_retu.trainer.pipeline imports npu_retu.commands.sft"]
    outside = imports_into(graph, modules, COMMANDS, lambda name: not any(_is_under(name, p) for p in ALLOWED_TO_IMPORT_COMMANDS))
    assert outside == ["npu_retu.report.text.py:1: npu_retu.report.text imports npu_retu.commands", *below]
