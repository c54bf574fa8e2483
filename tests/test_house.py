"""The house rules, read from the code with the standard library's ast: imports run down through
the floors and never in a circle, and kclassify's own imports sit at the top of each file except
at the boundary that must stay free of TensorFlow."""
import ast

import pytest

from conftest import ROOT

PACKAGE = ROOT / "kclassify"

# Highest floor first; a module may import its own floor or a lower one, never a higher one.
FLOORS = [
    ("interface", ("kclassify", "kclassify.api", "kclassify.cli", "kclassify.__main__")),
    ("commands", ("kclassify.commands",)),
    ("engine and run folder", ("kclassify.train", "kclassify.run", "kclassify.qat")),
    ("domain", ("kclassify.recipe", "kclassify.data", "kclassify.models", "kclassify.augment", "kclassify.layers",
                "kclassify.tflite", "kclassify.inference", "kclassify.tta")),
    ("leaves", ("kclassify.kit", "kclassify.metrics", "kclassify.errors", "kclassify.plots", "kclassify.runtime",
                "kclassify.registry", "kclassify.registration", "kclassify.catalog")),
]
# Where an import inside a function is the point: the TensorFlow-free boundary (the package, the
# API and the CLI start without TensorFlow; the engine's fork between its TensorFlow and JAX pieces,
# and the final export, which is TensorFlow's, so that JAX trains where TensorFlow is not installed)
# and the QAT child process (tf_keras, legacy Keras). A module, or one function of a module.
LAZY_ALLOWED = {"kclassify", "kclassify.api", "kclassify.cli", "kclassify.qat.worker", "kclassify.data.tfrecord",
                "kclassify.train.backends", "kclassify.commands.finish._exports"}


def module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor_of(module):
    best = None
    for level, (_, prefixes) in enumerate(FLOORS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (level, len(prefix))
    return None if best is None else best[0]


def resolve(node, module, is_package):
    """The kclassify modules an import statement names (a `from X import y` may name module X.y)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "kclassify"]
    base = node.module or ""
    if node.level:
        here = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join(here[:len(here) - node.level + 1] + ([base] if base else []))
    if base.split(".")[0] != "kclassify":
        return []
    return [f"{base}.{a.name}" if (PACKAGE.parent / f"{base}.{a.name}".replace(".", "/")).with_suffix(".py").exists()
            or (PACKAGE.parent / f"{base}.{a.name}".replace(".", "/")).is_dir() else base for a in node.names]


def imports():
    """[(module, file, imported module, the function it is imported in or None)] for every kclassify
    import (the outermost function, as module.function)."""
    rows = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        tree = ast.parse(path.read_text())

        def walk(node, inside):
            for child in ast.iter_child_nodes(node):
                nested = inside or (f"{module}.{child.name}"
                                    if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else None)
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    for target in resolve(child, module, path.name == "__init__.py"):
                        rows.append((module, path, target, nested))
                walk(child, nested)

        walk(tree, None)
    return rows


def test_every_module_has_a_floor():
    missing = sorted({m for m, *_ in imports() if floor_of(m) is None} |
                     {module_name(p) for p in PACKAGE.rglob("*.py") if floor_of(module_name(p)) is None})
    assert not missing, f"modules on no floor (add them to FLOORS): {missing}"


def test_imports_run_down_the_floors():
    wrong = [f"{path.relative_to(ROOT)} ({FLOORS[floor_of(m)][0]}) imports {t} ({FLOORS[floor_of(t)][0]})"
             for m, path, t, _ in imports() if floor_of(t) is not None and floor_of(t) < floor_of(m)]
    assert not wrong, "imports that run up a floor:\n" + "\n".join(wrong)


def test_no_import_circle():
    graph = {}
    for m, _, t, _ in imports():
        if t != m and not t.startswith(m + "."):  # a package's __init__ handing on its own modules
            graph.setdefault(m, set()).add(t)
    circle = find_circle(graph)
    assert circle is None, "import circle: " + " -> ".join(str(m) for m in circle)


def find_circle(graph):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_own_imports_sit_at_the_top_outside_the_boundary():
    inside = sorted({f"{path.relative_to(ROOT)} imports {t} inside a function"
                     for m, path, t, nested in imports() if nested and not {m, nested} & LAZY_ALLOWED})
    assert not inside, "\n".join(inside)


@pytest.mark.parametrize("graph, circle", [({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]), ({"a": {"b"}, "b": set()}, None)])
def test_the_circle_finder_finds_circles(graph, circle):
    assert find_circle(graph) == circle
