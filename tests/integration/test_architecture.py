"""The stage rule of docs/ARCHITECTURE.md, checked on the source: data flows one way,

    config -> cli -> parallel -> model -> data -> train step -> checkpoint -> train | infer
           -> eval | export -> jobs -> command aliases

and no module imports from a later stage (nor from a sibling stage: train and infer, eval and
export, do not import each other). Every `import` / `from ... import` counts, at the top of a
module or inside a function. Each module of the package is assigned a stage by `STAGES` (the
longest matching prefix wins); a module that matches none fails the test, so a new top-level
module or subpackage has to be placed in a stage here first.

`KNOWN_BACK_EDGES` lists the back edges the code still has; each is an arrow to remove, never to
add to. A listed edge that is gone also fails the test, so that the list only shrinks.

Functions fit on a screen: none in the package is longer than `MAX_FUNCTION_LINES` (its `def`
line to its last line, docstring included), apart from those `LONG_FUNCTIONS` names, a list that
likewise only shrinks.
"""

from __future__ import annotations

import ast
import pathlib
import sys

import pytest

PACKAGE = "bioinstruct_jax"
ROOT = pathlib.Path(__file__).resolve().parents[2] / PACKAGE

# Stages in data-flow order. A stage may import its own modules and those of earlier ranks only;
# stages of the same rank (train / infer, eval / export) are siblings and may not import each other.
STAGE_RANK: dict[str, int] = {
    "config": 0,       # the typed run config: loader and section schemas
    "cli": 1,          # argument types and the one error/exit-code policy of every command
    "parallel": 2,     # devices: mesh and sharding rules, multi-process start, accelerator figures
    "model": 3,        # LLaMA in Flax NNX and the LoRA adapters
    "data": 4,         # records, templates, tokenizers, the input pipeline, data generation
    "train-step": 5,   # the pure, jitted train / eval step and its optimizer
    "checkpoint": 6,   # every file format: HF, GGUF, safetensors, Orbax runs, PEFT adapters, restore
    "train": 7,        # the training loop, metrics, planner, non-finite and preemption guards
    "infer": 7,        # the generation engine, sampling, the generate command
    "eval": 8,         # tasks, metrics, the runner, comparisons
    "export": 8,       # merged HF / PEFT adapter export
    "jobs": 9,         # end-to-end jobs built from the stages (quickstart, mini reproduction)
    "entry": 10,       # thin command aliases: python -m bioinstruct_jax.generate / .plan / .quickstart
}

# Module-name prefix -> stage (the longest matching prefix wins).
STAGES: dict[str, str] = {
    PACKAGE: "parallel",  # the package __init__ only runs parallel/platforms.py's libtpu guard
    f"{PACKAGE}.config": "config",
    f"{PACKAGE}.cli": "cli",
    f"{PACKAGE}.parallel": "parallel",
    f"{PACKAGE}.model": "model",
    f"{PACKAGE}.data": "data",
    f"{PACKAGE}.train.step": "train-step",
    f"{PACKAGE}.checkpoint": "checkpoint",
    f"{PACKAGE}.train": "train",
    f"{PACKAGE}.infer": "infer",
    f"{PACKAGE}.eval": "eval",
    f"{PACKAGE}.export": "export",
    f"{PACKAGE}.jobs": "jobs",
    f"{PACKAGE}.generate": "entry",
    f"{PACKAGE}.plan": "entry",
    f"{PACKAGE}.quickstart": "entry",
}

# (importing module, imported module): back edges the code still has, each an arrow to remove.
# Empty since the config package owns every section schema and checkpoint/restore.py is the one
# restore path. Never add a line: move the code to the stage it belongs to.
KNOWN_BACK_EDGES: set[tuple[str, str]] = set()

MAX_FUNCTION_LINES = 80
# Qualified names of the functions still longer than MAX_FUNCTION_LINES, each one to split into
# named steps. Never add a name: split the function.
LONG_FUNCTIONS: set[str] = set()


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        stage = STAGES.get(".".join(parts[:n]))
        if stage is not None:
            return stage
    return None


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports_of(module: str, path: pathlib.Path, modules: dict[str, pathlib.Path]) -> list[tuple[str, int]]:
    """(imported package module, line) for every import statement of the module, anywhere in it."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from pkg import name`: the submodule pkg.name when there is one, else pkg itself
            names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in modules else prefix for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:  # `import a.b.c` of a module: its longest known prefix
                name = name.rpartition(".")[0]
            if name and name != module:
                out.append((name, node.lineno))
    return out


def edges() -> list[tuple[str, str, pathlib.Path, int]]:
    modules = package_modules()
    return [(m, target, path, line) for m, path in modules.items() for target, line in imports_of(m, path, modules)]


def is_back_edge(source: str, target: str) -> bool:
    s, t = stage_of(source), stage_of(target)
    if s == t:
        return False
    return STAGE_RANK[t] >= STAGE_RANK[s]


def test_every_module_has_a_stage():
    missing = [m for m in package_modules() if stage_of(m) is None]
    assert not missing, f"modules in no stage (place them in STAGES of {__file__}): {missing}"


def test_no_module_imports_from_a_later_stage():
    bad = []
    for source, target, path, line in edges():
        if is_back_edge(source, target) and (source, target) not in KNOWN_BACK_EDGES:
            bad.append(f"{path.relative_to(ROOT.parent)}:{line}: {source} ({stage_of(source)}) imports "
                       f"{target} ({stage_of(target)}), a later or sibling stage")
    assert not bad, "imports against the data flow (see docs/ARCHITECTURE.md):\n" + "\n".join(bad)


def test_known_back_edges_still_exist():
    """A back edge that was removed must leave KNOWN_BACK_EDGES too (the list only shrinks)."""
    present = {(s, t) for s, t, _, _ in edges()}
    gone = sorted(KNOWN_BACK_EDGES - present)
    assert not gone, f"no longer in the code, delete from KNOWN_BACK_EDGES: {gone}"
    assert all(is_back_edge(s, t) for s, t in KNOWN_BACK_EDGES), "KNOWN_BACK_EDGES holds a forward edge"


def test_no_import_circle():
    """No circle among the package's modules (known back edges aside: each closes at most the
    circle it is listed for, and goes with it)."""
    graph: dict[str, set[str]] = {m: set() for m in package_modules()}
    for source, target, _, _ in edges():
        if (source, target) not in KNOWN_BACK_EDGES:
            graph[source].add(target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


@pytest.mark.parametrize("source,target,expected", [
    (f"{PACKAGE}.data.tokenizer", f"{PACKAGE}.checkpoint.gguf", True),   # data reaching up to checkpoint
    (f"{PACKAGE}.infer.engine", f"{PACKAGE}.train.loop", True),          # siblings
    (f"{PACKAGE}.train.step", f"{PACKAGE}.train.loop", True),            # train step below the loop
    (f"{PACKAGE}.train.loop", f"{PACKAGE}.train.step", False),
    (f"{PACKAGE}.checkpoint.tokenizer", f"{PACKAGE}.data.tokenizer", False),
    (f"{PACKAGE}.eval.tasks", f"{PACKAGE}.data.templates", False),
    (f"{PACKAGE}.config.schema", f"{PACKAGE}.config.loader", False),     # the config package to come
])
def test_stage_rule(source, target, expected):
    assert is_back_edge(source, target) is expected


def function_lengths() -> dict[str, tuple[int, pathlib.Path, int]]:
    """module.Class.function (nested ones as outer.inner) -> (lines, file, first line)."""
    out: dict[str, tuple[int, pathlib.Path, int]] = {}

    def visit(node: ast.AST, prefix: str, path: pathlib.Path) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}.{child.name}"
                if not isinstance(child, ast.ClassDef):
                    out[name] = (child.end_lineno - child.lineno + 1, path, child.lineno)
                visit(child, name, path)
            else:
                visit(child, prefix, path)

    for module, path in package_modules().items():
        visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), module, path)
    return out


def test_no_function_is_longer_than_a_screen():
    long = {name: where for name, where in function_lengths().items() if where[0] > MAX_FUNCTION_LINES}
    bad = [f"{path.relative_to(ROOT.parent)}:{line}: {name} is {n} lines"
           for name, (n, path, line) in sorted(long.items()) if name not in LONG_FUNCTIONS]
    assert not bad, f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps):\n" + "\n".join(bad)
    short_now = sorted(LONG_FUNCTIONS - set(long))
    assert not short_now, f"no longer over {MAX_FUNCTION_LINES} lines (or gone), delete from LONG_FUNCTIONS: {short_now}"


def _calls_error_policy(node: ast.AST, policy_names: set[str]) -> bool:
    """Whether `node` calls `cli.errors.run` (as `run(...)` imported from it, or `<alias>.run(...)`)."""
    for call in ast.walk(node):
        if isinstance(call, ast.Call):
            f = call.func
            if isinstance(f, ast.Name) and f.id in policy_names:
                return True
            if isinstance(f, ast.Attribute) and f.attr == "run" and isinstance(f.value, ast.Name) \
                    and f.value.id in policy_names:
                return True
    return False


def _error_policy_names(tree: ast.Module) -> set[str]:
    """Local names of `cli.errors.run` / of the `cli.errors` module in a module."""
    names = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == f"{PACKAGE}.cli.errors":
            names |= {a.asname or a.name for a in node.names if a.name == "run"}
        if isinstance(node, ast.ImportFrom) and node.module == f"{PACKAGE}.cli":
            names |= {a.asname or a.name for a in node.names if a.name == "errors"}
    return names


def test_every_command_exits_through_the_one_error_policy():
    """Each `if __name__ == "__main__":` block calls `cli.errors.run` (docs/ERRORS.md), directly or
    through one function of another package module that does (data.generate's `run_command`)."""
    modules = package_modules()
    trees = {m: ast.parse(p.read_text(encoding="utf-8"), str(p)) for m, p in modules.items()}
    commands, bad = [], []
    for module, tree in trees.items():
        for block in tree.body:
            if not (isinstance(block, ast.If) and "__main__" in ast.unparse(block.test)):
                continue
            commands.append(module)
            if _calls_error_policy(block, _error_policy_names(tree)):
                continue
            called = {c.func.id for c in ast.walk(block) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)}
            via = [(n.module, a.name) for n in tree.body if isinstance(n, ast.ImportFrom) and n.module in trees
                   for a in n.names if (a.asname or a.name) in called]
            if not any(_calls_error_policy(d, _error_policy_names(trees[m])) for m, name in via
                       for d in trees[m].body if isinstance(d, ast.FunctionDef) and d.name == name):
                bad.append(module)
    assert len(commands) >= 10, commands
    assert not bad, f"commands that do not exit through cli.errors.run: {bad}"
