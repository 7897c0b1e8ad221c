"""The package's layout rules, checked on the source (no model, no SGLang).

- Library code lives in the library: nothing under benchmarks/ or tests/ imports `hass_sglang.cli`
  (running the `hass` command in a subprocess is how a user meets it, and is fine).
- One concept, one place: the default tree shapes (`tree.PAPER_TREE`, `tree.CPU_TREE`,
  `tree.CPU_BF16_TREE`) and the shipped-draft folder (`drafts.SHIPPED_DIR`) are defined once;
  every public error class lives in `errors.py`; no two modules define a function of the same name
  among the names that once meant two things.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hass_sglang"


def _python_files(*folders: Path) -> list[Path]:
    return sorted(p for folder in folders for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imported_modules(tree: ast.Module) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_benchmarks_and_tests_never_import_the_cli():
    offenders = [str(p.relative_to(ROOT)) for p in _python_files(ROOT / "benchmarks", ROOT / "tests")
                 if "hass_sglang.cli" in _imported_modules(_tree(p))]
    assert offenders == []


def test_library_modules_never_import_the_cli():
    offenders = [str(p.relative_to(ROOT)) for p in _python_files(PACKAGE)
                 if p.name != "cli.py" and "hass_sglang.cli" in _imported_modules(_tree(p))]
    assert offenders == []


PAPER, CPU, CPU_BF16 = (6, 10, 60), (3, 1, 4), (3, 4, 8)
TREE_FLAGS = {"--num-steps", "--topk", "--num-draft-tokens", "--speculative-num-steps", "--speculative-eagle-topk",
              "--speculative-num-draft-tokens"}


def _int(node) -> int | None:
    return node.value if isinstance(node, ast.Constant) and type(node.value) is int else None


def _tree_default_literals(path: Path) -> list[str]:
    """Places that spell a default tree shape with numbers instead of naming PAPER_TREE, CPU_TREE or
    CPU_BF16_TREE."""
    found = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, (ast.Call, ast.Tuple, ast.List)):
            items = node.args + [k.value for k in node.keywords] if isinstance(node, ast.Call) else node.elts
            ints = tuple(_int(x) for x in items)
            for shape in (PAPER, CPU, CPU_BF16):
                if any(ints[i : i + 3] == shape for i in range(len(ints) - 2)):
                    found.append(f"{path.name}:{node.lineno} {shape}")
            # strings "6 10 60" / "3 1 4" (tree specs) and flag lists "--speculative-num-steps", "3", ...
            strs = [x.value for x in items if isinstance(x, ast.Constant) and isinstance(x.value, str)]
            for shape in (PAPER, CPU, CPU_BF16):
                spec = " ".join(map(str, shape))
                if spec in strs or ",".join(map(str, shape)) in strs or all(str(v) in strs for v in shape) and any(
                        s in TREE_FLAGS for s in strs):
                    found.append(f"{path.name}:{node.lineno} {shape} as strings")
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and node.args[0].value in TREE_FLAGS:
            for k in node.keywords:
                if k.arg == "default" and _int(k.value) is not None:
                    found.append(f"{path.name}:{node.lineno} {node.args[0].value} default={_int(k.value)}")
    return found


def test_default_tree_shapes_are_defined_once():
    found = {str(p.relative_to(ROOT)): _tree_default_literals(p)
             for p in _python_files(PACKAGE, ROOT / "benchmarks") if p != PACKAGE / "tree.py"}
    assert {k: v for k, v in found.items() if v} == {}
    assert _tree_default_literals(PACKAGE / "tree.py"), "the check itself finds the definitions in tree.py"


def _locates_the_package_folder(node: ast.AST) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and sub.id == "__file__" or isinstance(sub, ast.Attribute) and sub.attr in (
                "__file__", "parent", "parents") or isinstance(sub, ast.Constant) and sub.value == "hass_sglang":
            return True
    return False


def test_the_shipped_draft_folder_is_defined_once():
    """Only drafts/__init__.py finds the shipped drafts from the package's location: no other
    `<package folder> / "drafts"` in the code, the scripts or the tests."""
    offenders = []
    for p in _python_files(PACKAGE, ROOT / "benchmarks", ROOT / "tests"):
        if p == PACKAGE / "drafts" / "__init__.py":
            continue
        for node in ast.walk(_tree(p)):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant) \
                    and node.right.value == "drafts" and _locates_the_package_folder(node.left):
                offenders.append(f"{p.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
    assert (PACKAGE / "drafts" / "__init__.py").read_text().count("Path(__file__)") == 1


def _top_level_defs(path: Path) -> dict[str, str]:
    return {n.name: type(n).__name__ for n in _tree(path).body
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}


def test_public_errors_live_in_errors_py():
    defined = {}
    for p in _python_files(PACKAGE):
        for node in _tree(p).body:
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error") and not node.name.startswith("_"):
                defined.setdefault(node.name, []).append(str(p.relative_to(ROOT)))
    assert {k: v for k, v in defined.items() if v != ["hass_sglang/errors.py"]} == {}


def test_names_that_meant_two_things_have_one_definition():
    names = ("read_records", "target_probs", "verify_greedy", "parse_tree", "tree_shape", "write_json_atomic",
             "cache_dir", "default_draft", "free_port", "init_distributed", "torch_dtype")
    where: dict[str, list[str]] = {}
    for p in _python_files(PACKAGE):
        for name in _top_level_defs(p):
            if name in names:
                where.setdefault(name, []).append(str(p.relative_to(PACKAGE)))
    assert {k: v for k, v in where.items() if len(v) > 1} == {}
    for stale in ("training.py", "generate.py", "bench/run.py", "bench/runner.py", "sglang_plugin.py"):
        assert not (PACKAGE / stale).exists(), stale
