"""The package imports only downward and has no import cycles.

Every ``import`` in cds/ (at the top of a module or inside a function: an import inside a
function still ties the two modules together) is read with ``ast``. Two checks:

- Subpackages (and the top-level modules) import only from those *below* them in LAYERS, so
  that ``ls cds/`` reads bottom-up as the pipeline: knowledge knows no FHIR and no HTTP,
  clinical knows no FHIR JSON, nothing below the engine knows the engine.
- The module-level graph (cds.knowledge.rules → cds.knowledge.terminology ...) has no cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

CDS = Path(__file__).resolve().parents[2] / "cds"

#: bottom first; a unit may import from units before it in this list, and from itself
LAYERS = ["config", "errors", "logs", "metrics", "urls", "gcpause", "ids",   # foundations: settings, errors, logs, gc
          "knowledge",        # rules/*.yaml → typed knowledge, the vocabulary
          "hooks",            # CDS Hooks wire schemas, the service registry
          "clinical",         # typed facts → typed findings (one module per domain)
          "fhir",             # prefetch/FHIR client, FHIR JSON → typed facts
          "cards",            # findings → cards
          "pages",            # rule documentation and card preview pages (HTML)
          "store",            # issued cards, feedback
          "security",         # JWT verifier, trusted clients, replay cache
          "engine",           # where the stages meet
          "http", "cli", "wsgi", "__init__"]


def _module_name(path: Path) -> str:
    rel = path.relative_to(CDS.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (CDS.parent / rel).with_suffix(".py").exists() or (CDS.parent / rel / "__init__.py").exists()


def _imports(path: Path, source: str | None = None) -> set[str]:
    """The cds modules ``path`` imports (``from cds.x import y`` is cds.x.y when y is a module)."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: set[str] = set()
    text = path.read_text(encoding="utf-8") if source is None else source
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "cds")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if module.split(".")[0] != "cds":
                continue
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add(sub if _is_module(sub) else module)
    return found


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in CDS.rglob("*.py")}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in _graph()}
    assert units <= set(LAYERS), f"add to LAYERS: {sorted(units - set(LAYERS))}"


def test_subpackages_import_only_downward():
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = sorted(f"{src} imports {dst}" for src, targets in _graph().items() for dst in targets
                    if dst != "cds" and rank[_unit(dst)] > rank[_unit(src)])
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}   # 1 visiting, 2 done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt == node or nxt == "cds" or nxt not in graph:
                continue
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(" → ".join(c) for c in cycles)


def test_the_check_sees_function_level_and_relative_imports():
    # the two kinds of import that hid the old rules ↔ cards and rules ↔ terminology cycles
    source = "def f():\n    from cds.cards.builder import X\n    from . import terminology\n"
    assert _imports(CDS / "knowledge" / "rules.py", source) == {
        "cds.cards.builder", "cds.knowledge.terminology"}
    # and such an import is reported as upward (knowledge is below cards)
    rank = {name: i for i, name in enumerate(LAYERS)}
    assert rank[_unit("cds.cards.builder")] > rank[_unit("cds.knowledge.rules")]
