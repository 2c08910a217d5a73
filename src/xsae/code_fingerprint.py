"""Fingerprints of the library code a workflow script runs.

Snakemake's code trigger sees a rule's `script:` file, not the `xsae` code it calls, so a change
to a metric would leave every table computed with the old code in place. Each rule passes the
fingerprint of the library code its script can reach as a param (`library_code`): the params
trigger then reruns exactly the rules whose code changed, and the provenance record names it.

Reach is static and per top-level definition, so that a line of `xsae.metrics.retrieval` reruns
the rules that call retrieval code and not every rule whose modules merely import it:

- from the script, every name it uses that an `xsae` import binds, followed through attribute
  chains (`module.function`), re-exports and, inside a reached definition, every global name it
  uses; a reached class brings its whole body;
- importing a module runs its top level, so a reached module brings its statements that are not
  plain definitions (calls, registrations, loops, definitions under an `xsae` decorator such as
  an encoder registry's), the modules its top level imports, and its parent packages;
- what cannot be followed is taken whole: a module used as an object, a module named in a string
  (imported by name), a module imported inside a function.

A definition's fingerprint is its syntax tree with docstrings removed, unparsed, so comments,
docstrings and formatting never trigger a rerun.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from xsae.io import atomic_path

PACKAGE = "xsae"
#: the import root that holds the `xsae` package
SOURCE_ROOT = Path(__file__).resolve().parent.parent

#: a reference: ("chain", names...) a dotted use of a name; ("symbol", module, name); ("module", module) whole
Ref = tuple[str, ...]


def module_path(name: str, root: Path = SOURCE_ROOT) -> Path | None:
    """The file of module `name` under import root `root`, or None when it is not a module there."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str | None:
    """The absolute module an ImportFrom names (relative imports resolved against `module`)."""
    if not node.level:
        return node.module
    parts = module.split(".") if is_package else module.split(".")[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join([*parts, node.module] if node.module else parts) or None


def _chain(node: ast.AST) -> tuple[str, ...] | None:
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return (node.id, *reversed(names))
    return None


def _references(statement: ast.AST, module: str, is_package: bool, root: Path) -> set[Ref]:
    """What a statement uses: dotted names, modules named in strings, imports inside it."""
    refs: set[Ref] = set()
    inner_attributes: set[int] = set()
    for node in ast.walk(statement):
        if isinstance(node, ast.Attribute):
            inner_attributes.add(id(node.value))
    for node in ast.walk(statement):
        if isinstance(node, ast.Attribute | ast.Name) and id(node) not in inner_attributes:
            chain = _chain(node)
            if chain:
                refs.add(("chain", *chain))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and module_path(node.value, root):
            refs.add(("module", node.value))
        elif isinstance(node, ast.Import) and node is not statement:
            refs.update(("module", a.name) for a in node.names if module_path(a.name, root))
        elif isinstance(node, ast.ImportFrom) and node is not statement:
            target = _absolute(node, module, is_package)
            if target and module_path(target, root):
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    refs.add(("module", sub) if module_path(sub, root) else ("symbol", target, alias.name))
    return refs


@dataclass
class _Module:
    """One file's top level: its definitions, its import bindings, and what running it does."""

    name: str
    defs: dict[str, list[str]] = field(default_factory=dict)  # name -> normalised statements
    def_refs: dict[str, set[Ref]] = field(default_factory=dict)
    bindings: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # -> (module, attr)
    imports: set[str] = field(default_factory=set)  # xsae modules its top level imports
    always: list[str] = field(default_factory=list)  # statements run on import, normalised
    always_refs: set[Ref] = field(default_factory=set)
    #: definitions an `xsae` registrar collects on import: (name, the registrar's dotted name)
    registrations: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)


def _defined_names(statement: ast.stmt) -> list[str] | None:
    """The names a plain definition binds (def, class, `NAME = ...`), else None."""
    if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [statement.name]
    if isinstance(statement, ast.Assign) and all(isinstance(t, ast.Name) for t in statement.targets):
        return [t.id for t in statement.targets]
    if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
        return [statement.target.id]
    return None


@functools.cache
def _parse(path: str, name: str, root: Path, mtime_ns: int, size: int) -> _Module:
    del mtime_ns, size  # the cache key: a file rewritten in place is read again
    tree = _strip_docstrings(ast.parse(_python_source(Path(path)), filename=path))
    is_package = Path(path).name == "__init__.py"
    module = _Module(name)
    for statement in tree.body:
        if isinstance(statement, ast.Import):
            for alias in statement.names:
                if module_path(alias.name, root):
                    module.imports.add(alias.name)
                    if alias.asname:
                        module.bindings[alias.asname] = (alias.name, None)
                    else:
                        top = alias.name.split(".")[0]
                        module.bindings[top] = (top, None)
            continue
        if isinstance(statement, ast.ImportFrom):
            target = _absolute(statement, name, is_package)
            if target and module_path(target, root):
                module.imports.add(target)
                for alias in statement.names:
                    sub = f"{target}.{alias.name}"
                    local = alias.asname or alias.name
                    if module_path(sub, root):
                        module.imports.add(sub)
                        module.bindings[local] = (sub, None)
                    else:
                        module.bindings[local] = (target, alias.name)
            continue
        source = ast.unparse(statement)
        refs = _references(statement, name, is_package, root)
        names = _defined_names(statement)
        if names is not None:
            for defined in names:
                module.defs.setdefault(defined, []).append(source)
                module.def_refs.setdefault(defined, set()).update(refs)
            module.registrations.extend((names[0], chain) for chain in _library_decorators(statement, module))
            continue
        module.always.append(source)
        registrar, registered = _registration(statement, module)
        if registered:  # `register("key")(Class)`: Class joins with its registry, not with every import
            module.registrations.extend((name, registrar) for name in registered)
        else:
            module.always_refs.update(refs)
    return module


def _python_source(path: Path) -> str:
    """A file's Python code; for a notebook, its code cells (IPython magics left out)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".ipynb":
        return text
    cells = json.loads(text).get("cells", [])
    sources = ["".join(c.get("source", "")) for c in cells if c.get("cell_type") == "code"]
    lines = [line for source in sources for line in source.splitlines()]
    return "\n".join(line for line in lines if not line.lstrip().startswith(("%", "!")))


def _library_chain(node: ast.AST, module: _Module) -> tuple[str, ...] | None:
    chain = _chain(node)
    return chain if chain and (chain[0] in module.bindings or chain[0] in module.defs) else None


def _registration(statement: ast.stmt, module: _Module) -> tuple[tuple[str, ...] | None, list[str]]:
    """(registrar, definitions) of a top-level `registrar(constants...)(Definition, ...)` statement
    of an `xsae` registrar and this module's own definitions; (None, []) for any other statement."""
    call = statement.value if isinstance(statement, ast.Expr) else None
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Call)):
        return None, []
    registered = [a.id for a in call.args if isinstance(a, ast.Name) and a.id in module.defs]
    func = call.func
    while isinstance(func, ast.Call):
        if not all(isinstance(a, ast.Constant) for a in func.args):
            return None, []
        func = func.func
    registrar = _library_chain(func, module)
    if registrar is None or len(registered) != len(call.args):
        return None, []
    return registrar, registered


def _library_decorators(statement: ast.stmt, module: _Module) -> list[tuple[str, ...]]:
    """The dotted names of a definition's `xsae` decorators (a registry may collect it on import)."""
    chains = [_library_chain(d.func if isinstance(d, ast.Call) else d, module)
              for d in getattr(statement, "decorator_list", [])]
    return [chain for chain in chains if chain]


def load_module(name: str, root: Path = SOURCE_ROOT) -> _Module:
    path = module_path(name, root)
    stat = os.stat(path)
    return _parse(str(path), name, root, stat.st_mtime_ns, stat.st_size)


class _Reach:
    """The definitions and module top levels reachable from a script."""

    def __init__(self, root: Path):
        self.root = root
        self.modules: set[str] = set()
        self.whole: set[str] = set()
        self.defs: set[tuple[str, str]] = set()
        self.used: set[str] = set()  # modules with a reached definition
        self.pending: list[tuple[_Module, Ref]] = []
        #: registered definitions by the decorator's module: they join once that module is used
        self.registered: dict[str, list[tuple[_Module, str]]] = {}

    def run(self) -> None:
        while self.pending:
            module, ref = self.pending.pop()
            self.follow(module, ref)

    def module(self, name: str) -> _Module:
        loaded = load_module(name, self.root)
        if name not in self.modules:
            self.modules.add(name)
            parts = name.split(".")
            for i in range(1, len(parts)):
                self.module(".".join(parts[:i]))
            for imported in sorted(loaded.imports):
                self.module(imported)
            self.pending.extend((loaded, ref) for ref in loaded.always_refs)
            for defined, decorator in loaded.registrations:
                self.register(loaded, defined, decorator)
        return loaded

    def register(self, module: _Module, name: str, decorator: tuple[str, ...]) -> None:
        """A definition its decorator registers: reached with the first use of the decorator's
        module (the registry's reader lives there), else not at all."""
        if decorator[0] in module.defs:
            owner = module.name
        else:
            target, attr = module.bindings[decorator[0]]
            nested = attr is None and len(decorator) > 1  # `module.register`: the module's own
            owner = ".".join([target, *decorator[1:-1]]) if nested else target
        self.registered.setdefault(owner, []).append((module, name))
        if owner in self.used:
            self.definition(module, name)

    def whole_module(self, name: str) -> None:
        loaded = self.module(name)
        if name not in self.whole:
            self.whole.add(name)
            for defined in loaded.defs:
                self.definition(loaded, defined)

    def definition(self, module: _Module, name: str) -> None:
        if (module.name, name) not in self.defs:
            first_use = module.name not in self.used
            self.used.add(module.name)
            self.defs.add((module.name, name))
            self.pending.extend((module, ref) for ref in module.def_refs[name])
            if first_use:
                for registrant, registered in self.registered.get(module.name, []):
                    self.definition(registrant, registered)

    def symbol(self, module_name: str, name: str, rest: tuple[str, ...] = ()) -> None:
        module = self.module(module_name)
        if name in module.defs:
            self.definition(module, name)
        elif name in module.bindings:
            self.bound(module.bindings[name], rest)
        elif module_path(f"{module_name}.{name}", self.root):
            self.attribute_chain(f"{module_name}.{name}", rest)
        else:  # defined in a way not followed (e.g. by a loop at the top level): all of it
            self.whole_module(module_name)

    def bound(self, binding: tuple[str, str | None], rest: tuple[str, ...]) -> None:
        target, attr = binding
        if attr is None:
            self.attribute_chain(target, rest)
        else:
            self.symbol(target, attr, rest)

    def attribute_chain(self, module_name: str, rest: tuple[str, ...]) -> None:
        """`module.rest[0].rest[1]...`: descend through submodules to the definition it names."""
        while rest and module_path(f"{module_name}.{rest[0]}", self.root):
            module_name, rest = f"{module_name}.{rest[0]}", rest[1:]
        if rest:
            self.symbol(module_name, rest[0], rest[1:])
        else:  # the module itself, used as an object
            self.whole_module(module_name)

    def follow(self, module: _Module, ref: Ref) -> None:
        kind, *parts = ref
        if kind == "module":
            self.whole_module(parts[0])
        elif kind == "symbol":
            self.symbol(parts[0], parts[1])
        elif parts[0] in module.defs:
            self.definition(module, parts[0])
        elif parts[0] in module.bindings:
            self.bound(module.bindings[parts[0]], tuple(parts[1:]))

    def digest(self) -> str:
        digest = hashlib.sha256()
        for name in sorted(self.modules):
            loaded = load_module(name, self.root)
            digest.update(f"module {name}\n".encode())
            for source in loaded.always:
                digest.update(f"{source}\n".encode())
            for defined in sorted(d for m, d in self.defs if m == name):
                for source in loaded.defs[defined]:
                    digest.update(f"def {defined}\n{source}\n".encode())
        return digest.hexdigest()[:16]


def reach(script: str | os.PathLike, root: Path = SOURCE_ROOT) -> _Reach:
    """Everything of the library that running `script` can execute (see the module docstring)."""
    script_module = _parse(str(script), "__main__", root, *_stat_key(script))
    found = _Reach(root)
    for imported in sorted(script_module.imports):
        found.module(imported)
    for ref in script_module.always_refs:
        found.pending.append((script_module, ref))
    for refs in script_module.def_refs.values():
        found.pending.extend((script_module, ref) for ref in refs)
    found.run()
    return found


def _stat_key(path: str | os.PathLike) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_mtime_ns, stat.st_size


def fingerprint(script: str | os.PathLike, root: Path = SOURCE_ROOT, *,
                cache: str | os.PathLike | None = None) -> str:
    """16 hex digits of sha256 over the normalised library code `script` can reach.

    With `cache` (a JSON file), a script whose files all keep their size and mtime is not parsed
    again: every job of a run evaluates its rule's fingerprint when Snakemake starts it.
    """
    key = str(Path(script).resolve())
    entries = _read_cache(cache) if cache else {}
    entry = entries.get(key)
    if entry and all(_file_key(path) == stamp for path, stamp in entry["files"].items()):
        return entry["fingerprint"]
    found = reach(script, root)
    value = found.digest()
    if cache:
        files = [key, *(str(module_path(name, root)) for name in sorted(found.modules))]
        entries[key] = {"fingerprint": value, "files": {path: _file_key(path) for path in files}}
        _write_cache(cache, entries)
    return value


def _file_key(path: str) -> list[int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_mtime_ns, stat.st_size]


def _read_cache(path: str | os.PathLike) -> dict:
    try:
        entries = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def _write_cache(path: str | os.PathLike, entries: dict) -> None:
    """Best effort (a read-only working directory only loses the cache), never half-written."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps(entries, sort_keys=True), encoding="utf-8")
    except OSError:
        pass
