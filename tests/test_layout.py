"""The package's layering, checked on the source: no import goes up a layer, none goes round in a cycle.

Layers, bottom to top (a module may import its own layer and the ones below):

0. ``utils``                              helpers with no Gated-SCNN knowledge
1. ``config``, ``data.labels``, ``deploy``   typed configs; the label tables; LiteRT/ONNX runners (no TensorFlow)
2. ``layers``, ``losses``, ``metrics``, ``backbones``   ``keras.ops`` code (runs on JAX too)
3. ``model``                              ``GatedSCNN``
4. ``data``, ``checkpoint_import``        TensorFlow input pipeline; weights trained elsewhere
5. ``training``                           the ``model.fit`` driver and its run directory
6. ``export``                             SavedModel for TF Serving
7. ``prediction``                         predicting image files (through the serving graph)
8. ``evaluation``                         the paper's metrics over a dataset
9. ``cli``                                command-line tools

``bench/``, ``scripts/`` and the libraries never import ``gscnn_tf.cli`` (the thin entry points
and ``tfrecords_tools/`` are CLI themselves), and nothing outside ``tests/`` imports a test.
"""
import ast
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RANKS = {"utils": 0, "config": 1, "data.labels": 1, "deploy": 1, "layers": 2, "losses": 2, "metrics": 2, "backbones": 2,
         "model": 3, "data": 4, "checkpoint_import": 4, "training": 5, "export": 6, "prediction": 7,
         "evaluation": 8, "cli": 9}
TOP_LEVEL_MODULES = {"__init__.py", "config.py", "model.py"}  # everything else lives in a package


def python_files(*tops):
    for top in tops:
        for folder, _, names in os.walk(os.path.join(REPO, top)):
            yield from (os.path.join(folder, n) for n in sorted(names) if n.endswith(".py"))


def module_name(path):
    name = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def imported_modules(path):
    """Every module ``path`` imports, at the top or inside a function (``from a import b`` gives
    ``a.b`` when that is a module, else ``a``)."""
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                base = os.path.join(REPO, *sub.split("."))
                found.add(sub if os.path.exists(base + ".py") or os.path.isdir(base) else node.module)
    return found


def rank(module):
    """The layer of a ``gscnn_tf.*`` module (the longest matching entry of RANKS)."""
    parts = module.split(".")[1:]
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in RANKS:
            return RANKS[".".join(parts[:n])]
    return -1  # the package itself


def upward_imports(graph):
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                  if b.startswith("gscnn_tf.") and a != "gscnn_tf" and rank(b) > rank(a))


def cycles(graph):
    """The import cycles among the modules of ``graph`` (each found once, as a list of modules)."""
    found, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt in graph and nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


@pytest.fixture(scope="module")
def library_graph():
    graph = {}
    for path in python_files("gscnn_tf"):
        graph[module_name(path)] = {m for m in imported_modules(path) if m.startswith("gscnn_tf")}
    return graph


def test_every_library_module_has_a_layer(library_graph):
    assert [m for m in library_graph if m != "gscnn_tf" and rank(m) < 0] == []


def test_no_library_module_imports_a_higher_layer(library_graph):
    assert upward_imports(library_graph) == []


def test_no_import_cycles(library_graph):
    # The package face imports the model to register it with Keras; leave it out, like Python does
    # (a submodule's import of ``gscnn_tf`` finds it half-initialised, not a cycle).
    graph = {m: {t for t in targets if t != "gscnn_tf"} for m, targets in library_graph.items()}
    assert cycles(graph) == []


def test_the_checks_catch_what_they_look_for():
    assert upward_imports({"gscnn_tf.layers.canny": {"gscnn_tf.training.run", "gscnn_tf.utils.atomic"}}) == \
        ["gscnn_tf.layers.canny -> gscnn_tf.training.run"]
    assert rank("gscnn_tf.data.labels") == 1 and rank("gscnn_tf.data.pipeline") == 4
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_loose_modules_beside_the_packages():
    loose = {n for n in os.listdir(os.path.join(REPO, "gscnn_tf")) if n.endswith(".py")}
    assert loose == TOP_LEVEL_MODULES


def test_package_faces_only_name_things():
    """A package's ``__init__.py`` holds a docstring, imports and ``__all__`` (and at most a lazy
    ``__getattr__``): code lives in the package's modules."""
    bad = []
    for path in python_files("gscnn_tf"):
        if os.path.basename(path) != "__init__.py" or module_name(path) == "gscnn_tf":
            continue
        for node in ast.parse(open(path, encoding="utf-8").read()).body:
            allowed = (isinstance(node, (ast.Import, ast.ImportFrom))
                       or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
                       or (isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["__all__"])
                       or (isinstance(node, ast.FunctionDef) and node.name == "__getattr__"))
            if not allowed:
                bad.append(f"{os.path.relpath(path, REPO)}:{node.lineno}")
    assert bad == []


def test_tools_and_benchmarks_use_the_library_not_the_cli_or_the_tests():
    bad = []
    for path in python_files("bench", "scripts"):
        source = open(path, encoding="utf-8").read()
        names = imported_modules(path)
        if any(n.startswith("gscnn_tf.cli") for n in names):
            bad.append(f"{os.path.relpath(path, REPO)} imports gscnn_tf.cli")
        on_path = re.search(r"sys\.path\.\w+\(.*[\"']tests[\"']", source)  # a test file made importable
        if any(n == "conftest" or n.startswith(("test_", "tests")) for n in names) or on_path:
            bad.append(f"{os.path.relpath(path, REPO)} reaches into tests/")
    assert bad == []


def test_no_test_module_imports_another():
    bad = [f"{os.path.relpath(path, REPO)}: {name}" for path in python_files("tests")
           for name in imported_modules(path) if name.startswith("test_")]
    assert bad == []
