"""Which library code a workflow job runs, read from the imports, and its fingerprint.

A rule's `code` param is the hash of every `ombrl` source file its job can import: the stage's
module (`STAGE_MODULES`) and, for a policy job, its method's module, each followed through
its imports (module level and inside functions; blocks under `if TYPE_CHECKING:` never run
and are skipped), plus the package `__init__` files on the way and `cli.py`, which runs every
job (followed through its module-level imports only: each verb imports its own stage inside
its function, and those imports run only for that verb). Editing any of those files reruns
exactly the jobs that import it: editing `agents/networks.py` reruns bc and the SAC family,
editing `agents/sac.py` does not rerun bc, editing a module no stage imports reruns nothing.

The one import the reader cannot see is the methods registry's `importlib.import_module`,
whose target is named by `METHODS`, and which `job_files` adds itself. Any other dynamic
import would be a silent gap: `dynamic_imports` lists them, and the test suite requires it to
find none.
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

from ombrl.errors import OmbrlError
from ombrl.methods import method_spec

PACKAGE = "ombrl"
PACKAGE_DIR = Path(__file__).parent
#: Workflow stage -> the module its `ombrl` verb calls.
STAGE_MODULES = {
    "download": "ombrl.data.d4rl",
    "collect": "ombrl.data.collect",
    "behaviour": "ombrl.data.behaviour",
    "generate": "ombrl.data.generate",
    "ensemble": "ombrl.ensembles",
    "policy": "ombrl.policies",
    "scores": "ombrl.scores",
    "pets": "ombrl.planning.pets",
}
#: The module whose dynamic import `job_files` resolves through the registry.
REGISTRY_MODULE = "ombrl.methods"
#: The entry point: every job runs it, but only the verb's own function-level imports.
CLI_MODULE = "ombrl.cli"


def module_file(name: str) -> Path | None:
    """The source file of an `ombrl` module or package; None for a name that is not one
    (e.g. a function imported with `from ombrl.x import f`)."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _parents(name: str) -> list[str]:
    """`ombrl.a.b` -> [`ombrl`, `ombrl.a`]: the packages importing it imports first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(tree: ast.AST, in_functions: bool) -> list[str]:
    """Every module name imported in `tree` (inside functions too, if `in_functions`), except
    under `if TYPE_CHECKING:`."""
    names: list[str] = []

    def visit(node: ast.AST) -> None:
        if not in_functions and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            return
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


@cache
def _direct_imports(name: str) -> tuple[str, ...]:
    """The `ombrl` modules that module `name` imports (and their parent packages)."""
    path = module_file(name)
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for imported in _imported_names(tree, in_functions=name != CLI_MODULE):
        if module_file(imported) is not None:
            found.extend([*_parents(imported), imported])
    return tuple(dict.fromkeys(found))


def closure(roots: list[str]) -> set[str]:
    """`roots` and every `ombrl` module they import, directly or not."""
    seen: set[str] = set()
    stack = [m for root in roots for m in (*_parents(root), root)]
    while stack:
        name = stack.pop()
        if name in seen or module_file(name) is None:
            continue
        seen.add(name)
        stack.extend(_direct_imports(name))
    return seen


def job_files(stage: str, method: str | None = None) -> list[Path]:
    """The source files a job of `stage` (running `method`) can execute, sorted.

    Raises:
        OmbrlError: an unknown stage or method.
    """
    if stage not in STAGE_MODULES:
        raise OmbrlError(f"stage: {stage!r} is not one of {', '.join(STAGE_MODULES)}")
    roots = [CLI_MODULE, STAGE_MODULES[stage]]
    if method is not None:
        roots.append(method_spec(method).module_name)
    return sorted(module_file(name) for name in closure(roots))


def stage_fingerprint(stage: str, method: str | None = None) -> str:
    """sha256 (12 hex digits) of the files `job_files` names, paths included."""
    digest = hashlib.sha256()
    for path in job_files(stage, method):
        digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def dynamic_imports() -> list[str]:
    """`file:line` of every import the reader cannot follow (`importlib.import_module`,
    `__import__`), outside the methods registry."""
    found = []
    registry = module_file(REGISTRY_MODULE)
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        if path == registry:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name in ("import_module", "__import__"):
                    found.append(f"{path.relative_to(PACKAGE_DIR)}:{node.lineno}")
    return found
