"""The package's structure, checked: no import cycles, imports at the top of modules (but for optional heavy
dependencies, each with its reason), short functions, and no block of code written twice."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from collections import defaultdict

import pytest

from .conftest import ROOT

PACKAGE = os.path.join(ROOT, "adet")
MAX_FUNCTION_LINES = 60
MIN_REPEATED_LINES = 6
# Imported inside functions on purpose: optional, or heavy and needed by one code path only.
DEFERRED_IMPORTS = {"onnx", "onnxruntime", "onnxruntime.quantization", "matplotlib", "matplotlib.pyplot",
                    "torch.utils.tensorboard", "faster_coco_eval", "torch.utils.cpp_extension", "huggingface_hub",
                    "wandb", "mlflow", "uvicorn", "adet.serve", "adet.integrations.label_studio.backend",
                    "adet.integrations.label_studio.task_images", "cvat_sdk", "gradio", "adet.demo.page",
                    "adet.demo.space", "adet.demo.served"}
# Data tables (every key with its value) are not code: lines alike there are not repetitions.
DATA_TABLES = {os.path.join("config", "defaults.py"), os.path.join("config", "compat.py")}


def package_modules() -> dict[str, tuple[str, ast.Module]]:
    modules = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                with open(path, encoding="utf-8") as f:
                    source = f.read()
                modules[".".join(parts)] = (path, ast.parse(source))
    return modules


def imported_modules(module: str, path: str, tree: ast.AST, known: set[str]) -> set[str]:
    """The package modules ``module`` imports anywhere in its file: function-level imports included, and any string
    naming a package module (``importlib.import_module`` of a command table or a lazy attribute)."""
    is_package = path.endswith("__init__.py")
    found = set()
    logger_names = {id(arg) for node in ast.walk(tree) if isinstance(node, ast.Call)
                    and getattr(node.func, "attr", getattr(node.func, "id", "")) == "getLogger" for arg in node.args}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in known \
                and "." in node.value and id(node) not in logger_names:
            found.add(node.value)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.update(f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names)
    return {name for name in found if name in known and name != module}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_in_the_package():
    modules = package_modules()
    graph = {name: imported_modules(name, path, tree, set(modules)) for name, (path, tree) in modules.items()}
    assert sum(map(len, graph.values())) > 150  # the graph is really read
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


# The package's layers, lowest first: a package imports from its own layer or below, never above (the library never
# imports its command line; the model never imports the engine). Same-layer imports must not form a cycle.
LAYERS = [
    ("errors", "version"),
    ("config", "structures", "layers", "utils"),  # utils: comm, events, logger, plots, the visualizer
    ("modeling", "data", "solver", "checkpoint"),
    ("evaluation", "model_zoo"),                  # model_zoo: packaged configs, resolve_config, get()
    ("engine",),
    ("export",),
    ("api", "training_api"),
    ("serve",),                                   # the HTTP service: a model of the API behind FastAPI
    ("integrations",),                            # Label Studio's ML backend (on serve), CVAT's function
    ("demo",),                                    # the web page (Gradio), standalone or on serve
    ("cli", "__main__", ""),                      # "": the package itself (its lazy attributes reach api)
]
LAYER_OF = {package: level for level, packages in enumerate(LAYERS) for package in packages}


def package_of(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def package_graph() -> dict[str, set[str]]:
    modules = package_modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, (path, tree) in modules.items():
        graph[package_of(name)].update(package_of(m) for m in imported_modules(name, path, tree, set(modules)))
    return {package: targets - {package} for package, targets in graph.items()}


def test_every_package_has_a_layer():
    assert set(package_graph()) <= set(LAYER_OF), set(package_graph()) - set(LAYER_OF)


def test_packages_import_only_from_their_layer_or_below():
    graph = package_graph()
    assert graph["api"] and graph["cli"]  # the graph is really read
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if LAYER_OF[b] > LAYER_OF[a])
    assert upward == [], f"imports against the layer table: {upward}"


def test_no_import_cycles_between_packages():
    graph = package_graph()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


# Inside the engine, by concern, lowest first: the distributed stack knows nothing of models; inference knows
# nothing of training; evaluation of DATASETS.TEST runs inference; training uses them all; the package's own modules
# (what detectron2 scripts import, the argument parser) sit on top.
ENGINE_LAYERS = ["distributed", "inference", "evaluate", "training", ""]


def test_engine_concerns_import_only_downwards():
    modules = package_modules()

    def concern(module: str) -> str:
        part = module.split(".")[2] if module.count(".") >= 2 else ""
        return part if part in ENGINE_LAYERS else ""

    edges = {(concern(name), concern(target)) for name, (path, tree) in modules.items() if name.startswith(
        "adet.engine.") for target in imported_modules(name, path, tree, set(modules)) if target.startswith(
        "adet.engine.")}
    assert ("training", "distributed") in edges and ("inference", "inference") in edges  # really read
    upward = sorted(f"{a} -> {b}" for a, b in edges if ENGINE_LAYERS.index(b) > ENGINE_LAYERS.index(a))
    assert upward == [], f"engine imports against its concerns' order: {upward}"


def loaded_after(code: str) -> list[str]:
    """The modules loaded in a fresh interpreter by ``code``."""
    script = code + "\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_adet_is_cheap():
    loaded = [m for m in loaded_after("import adet") if m == "adet" or m.startswith("adet.")]
    assert "adet" in loaded and len(loaded) <= 5, loaded
    assert "torch" not in loaded_after("import adet")


def test_the_model_loads_no_cli_export_engine_or_evaluation():
    loaded = loaded_after("import adet.modeling")
    assert "adet.modeling.embedmask.embedmask" in loaded
    above = [m for m in loaded if package_of(m) in ("cli", "export", "engine", "evaluation", "api", "training_api")
             and m.startswith("adet.")]
    assert above == [], above


def test_embedmask_help_answers_without_torch():
    loaded = loaded_after("from adet.cli import main\nassert main(['--help']) == 0")
    assert "adet.cli" in loaded and "torch" not in loaded, [m for m in loaded if m.startswith(("torch", "adet"))]


def test_imports_are_at_module_level_except_deferred_optional_ones():
    offenders = []
    for path, tree in package_modules().values():
        lines = open(path, encoding="utf-8").read().splitlines()
        for function in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in ast.walk(function):
                if not isinstance(node, (ast.Import, ast.ImportFrom)):
                    continue
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                commented = "#" in lines[node.lineno - 1] or lines[node.lineno - 2].strip().startswith("#")
                if not all(name in DEFERRED_IMPORTS for name in names) or not commented:
                    offenders.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} {', '.join(names)}")
    assert offenders == []


def test_no_function_is_longer_than_60_lines():
    long = [f"{os.path.relpath(path, ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path, tree in package_modules().values() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


def code_lines(path: str) -> list[tuple[int, str]]:
    """(line number, normalised text) of the lines that carry code: no blank lines, comments, docstrings, imports
    or lone brackets."""
    source = open(path, encoding="utf-8").read()
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(
                getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            docstrings.update(range(body[0].lineno, body[0].end_lineno + 1))
    kept = []
    for number, line in enumerate(source.splitlines(), 1):
        text = re.sub(r"\s+", " ", line.split("  #")[0]).strip()
        if (number in docstrings or not text or text.startswith(("#", "import ", "from ")) or
                re.fullmatch(r"[\[\](){}:,]*", text)):
            continue
        kept.append((number, text))
    return kept


def repeated_blocks(files: dict[str, list[tuple[int, str]]], size: int) -> list[str]:
    """Places where ``size`` consecutive code lines stand again elsewhere, as "a.py:10 ~ b.py:40"."""
    seen: dict[tuple[str, ...], list[tuple[str, int]]] = defaultdict(list)
    for name, lines in files.items():
        for start in range(len(lines) - size + 1):
            seen[tuple(text for _, text in lines[start:start + size])].append((name, lines[start][0]))
    repeats = []
    for places in seen.values():
        # Overlapping windows of one run inside a single file are the same place, not a repetition.
        distinct = [p for i, p in enumerate(places) if all(p[0] != q[0] or abs(p[1] - q[1]) >= size
                                                           for q in places[:i])]
        if len(distinct) > 1:
            repeats.append(" ~ ".join(f"{name}:{line}" for name, line in distinct))
    return repeats


def test_repeated_block_detection_works():
    block = [(i, f"value_{i} = compute({i})") for i in range(6)]
    assert repeated_blocks({"a.py": block, "b.py": [(1, "x = 1"), *block]}, 6) == ["a.py:0 ~ b.py:0"]
    assert repeated_blocks({"a.py": block}, 6) == []


def test_no_block_of_six_lines_is_written_twice():
    files = {}
    for folder, _, names in os.walk(PACKAGE):
        for name in names:
            relative = os.path.relpath(os.path.join(folder, name), PACKAGE)
            if name.endswith(".py") and relative not in DATA_TABLES:
                files[relative] = code_lines(os.path.join(folder, name))
    assert repeated_blocks(files, MIN_REPEATED_LINES) == []


@pytest.mark.parametrize("module", ["adet.errors", "adet.version"])
def test_leaf_modules_import_nothing_from_the_package(module):
    modules = package_modules()
    path, tree = modules[module]
    assert imported_modules(module, path, tree, set(modules)) == set()


# Every collective goes through adet.utils.comm, which picks the group by the tensor's device: under NCCL a CPU
# tensor on the default group raises, and only comm knows which group takes what.
COLLECTIVES = {"all_reduce", "all_reduce_coalesced", "broadcast", "barrier", "monitored_barrier", "all_gather",
               "all_gather_into_tensor", "all_gather_object", "all_gather_coalesced", "gather", "gather_object",
               "scatter", "scatter_object_list", "reduce", "reduce_scatter", "reduce_scatter_tensor", "all_to_all",
               "all_to_all_single", "send", "recv", "isend", "irecv", "batch_isend_irecv", "broadcast_object_list",
               "send_object_list", "recv_object_list"}
COLLECTIVES_MODULE = "adet.utils.comm"


def distributed_collective_calls(tree: ast.AST) -> list[str]:
    """``name (line N)`` for each call of a torch.distributed collective in ``tree``, whatever the module's alias."""
    aliases = {"torch.distributed"}  # dotted names that mean torch.distributed in this file
    direct = {}  # names imported from torch.distributed: local name -> collective
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update(a.asname for a in node.names if a.name == "torch.distributed" and a.asname)
        elif isinstance(node, ast.ImportFrom) and node.module == "torch" :
            aliases.update(a.asname or a.name for a in node.names if a.name == "distributed")
        elif isinstance(node, ast.ImportFrom) and node.module == "torch.distributed":
            direct.update({a.asname or a.name: a.name for a in node.names if a.name in COLLECTIVES})
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        if isinstance(node.func, ast.Attribute) and node.func.attr in COLLECTIVES \
                and ast.unparse(node.func.value) in aliases:
            found.append(f"{node.func.attr} (line {node.lineno})")
        elif isinstance(node.func, ast.Name) and node.func.id in direct:
            found.append(f"{direct[node.func.id]} (line {node.lineno})")
    return found


def test_collective_detection_sees_every_spelling():
    source = ("import torch\nimport torch.distributed as dist\nfrom torch import distributed as d2\n"
              "from torch.distributed import barrier as wait\n"
              "dist.all_reduce(x)\nd2.broadcast(x, 0)\ntorch.distributed.all_gather_object(a, b)\nwait()\n"
              "dist.get_rank()\nx.broadcast(0)\n")
    assert distributed_collective_calls(ast.parse(source)) == [
        "all_reduce (line 5)", "broadcast (line 6)", "all_gather_object (line 7)", "barrier (line 8)"]


def test_collectives_only_in_comm():
    modules = package_modules()
    assert COLLECTIVES_MODULE in modules and distributed_collective_calls(modules[COLLECTIVES_MODULE][1])
    outside = {name: calls for name, (_, tree) in modules.items() if name != COLLECTIVES_MODULE
               for calls in [distributed_collective_calls(tree)] if calls}
    assert not outside, f"torch.distributed collectives outside {COLLECTIVES_MODULE}: {outside}"
