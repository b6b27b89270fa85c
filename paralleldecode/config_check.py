"""Config checks that answer before Lightning is imported.

Importing Lightning, torch and transformers takes seconds, and LightningCLI only finds a
mistyped option after that. This module reads what the command line says (the
``--config`` files and ``--key value`` overrides, merged the way LightningCLI merges
them) and checks what it can without those imports:

* the options of this package's own model and data classes (names, simple types and
  choices), read from their source with :mod:`ast`, never by importing them;
* strategy names and each strategy's options (the registered classes, read the same way);
* data set names and options (the data registry imports no heavy library);
* files that are named but missing (a data file, a local model folder), and the output
  folder rule (``resume`` needs a fixed folder; a folder holding predictions is never
  written over).

Anything it cannot judge (another class, a value of a type it does not read) is left to
LightningCLI, which checks everything again. A mistake found here raises the package's own
:class:`~paralleldecode.errors.UserError`, so the command prints one line and exits with 2.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from paralleldecode.errors import OptionError

SUBCOMMANDS = ("fit", "validate", "test", "predict")


@dataclass(frozen=True)
class Param:
    name: str
    annotation: str  # source text, "" when unannotated


# -- reading classes from source -------------------------------------------------------


def _package_dir(top: str) -> Path | None:
    spec = importlib.util.find_spec(top)  # a top-level package: located, not imported
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _module_file(dotted: str) -> Path | None:
    top, *rest = dotted.split(".")
    root = _package_dir(top)
    if root is None:
        return None
    base = root.joinpath(*rest)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def _find_class(dotted_class: str, depth: int = 0) -> tuple[Path, ast.ClassDef] | None:
    """Where ``pkg.mod.Class`` is defined, following ``from x import Class`` re-exports."""
    module, _, name = dotted_class.rpartition(".")
    path = _module_file(module) if module else None
    if path is None or depth > 4:
        return None
    tree = _tree(path)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return path, node
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return _find_class(f"{node.module}.{alias.name}", depth + 1)
    return None


def _params(cls: ast.ClassDef) -> list[Param] | None:
    """The parameters of the class's own ``__init__``; None without one (or with
    ``*args``/``**kwargs``, whose names cannot be read)."""
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.name == "__init__":
            args = node.args
            if args.vararg or args.kwarg:
                return None
            return [Param(a.arg, ast.unparse(a.annotation) if a.annotation else "")
                    for a in args.posonlyargs + args.args + args.kwonlyargs if a.arg != "self"]
    return None


def class_params(dotted_class: str) -> list[Param] | None:
    """The ``__init__`` parameters of a class of this package, read from its source."""
    found = _find_class(dotted_class)
    return _params(found[1]) if found else None


@dataclass(frozen=True)
class StrategySpec:
    name: str
    options: tuple[str, ...]


@cache
def registered_strategies() -> dict[str, StrategySpec]:
    """Every class of ``paralleldecode.strategies`` decorated with ``@register``: its
    ``name`` and its constructor's options (inherited ones included)."""
    folder = _package_dir("paralleldecode")
    classes: dict[str, ast.ClassDef] = {}
    for path in sorted((folder / "strategies").glob("*.py")):
        for node in _tree(path).body:
            if isinstance(node, ast.ClassDef):
                classes[node.name] = node

    def attr(cls: ast.ClassDef | None, key: str):
        while cls is not None:
            for node in cls.body:
                if isinstance(node, (ast.Assign, ast.AnnAssign)):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    if any(isinstance(t, ast.Name) and t.id == key for t in targets) and node.value is not None:
                        try:
                            return ast.literal_eval(node.value)
                        except ValueError:
                            return None
            cls = _base(cls)
        return None

    def _base(cls: ast.ClassDef) -> ast.ClassDef | None:
        for b in cls.bases:
            if isinstance(b, ast.Name) and b.id in classes:
                return classes[b.id]
        return None

    def options(cls: ast.ClassDef | None) -> tuple[str, ...]:
        while cls is not None:  # the nearest __init__ up the bases
            params = _params(cls)
            if params is not None:
                return tuple(p.name for p in params)
            cls = _base(cls)
        return ()

    specs = {}
    for cls in classes.values():
        if any(isinstance(d, ast.Name) and d.id == "register" for d in cls.decorator_list):
            name = attr(cls, "name")
            if isinstance(name, str):
                specs[name] = StrategySpec(name, options(cls))
    return specs


# -- the command line -------------------------------------------------------------------


def parse_command_line(args: list[str]) -> tuple[str | None, dict[str, Any]]:
    """The subcommand and the merged config (files in order, then overrides) as LightningCLI
    would see it; an override's value is read as YAML, as jsonargparse reads it."""
    sub = next((a for a in args if a in SUBCOMMANDS), None)
    if sub is None:
        return None, {}
    rest = args[args.index(sub) + 1:]
    config: dict[str, Any] = {}
    i = 0
    while i < len(rest):
        arg = rest[i]
        key, value, step = arg, None, 1
        if "=" in arg and arg.startswith("--"):
            key, value = arg.split("=", 1)
        elif i + 1 < len(rest) and not rest[i + 1].startswith("--"):
            value, step = rest[i + 1], 2
        if key in ("-c", "--config") and value is not None:
            _merge(config, _read_config(value))
        elif key.startswith("--") and value is not None:
            _set(config, key[2:].split("."), yaml.safe_load(value) if value != "" else "")
        i += step
    return sub, config


def _read_config(path: str) -> dict[str, Any]:
    p = Path(os.path.expanduser(path))
    if not p.is_file():
        raise OptionError(f"--config {path}: no such file")
    try:
        loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise OptionError(f"--config {path} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(loaded, dict):
        raise OptionError(f"--config {path} must hold a mapping of options, got a {type(loaded).__name__}")
    return loaded


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def _set(config: dict[str, Any], path: list[str], value: Any) -> None:
    node = config
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {} if key not in node or node[key] is None else {"class_path": node[key]}
        node = node[key]
    node[path[-1]] = value


# -- checks -----------------------------------------------------------------------------


def check_command_line(args: list[str]) -> None:
    """Raise a :class:`~paralleldecode.errors.UserError` for a mistake the command line's
    config shows before anything heavy is imported (see the module docstring)."""
    if any(a in ("-h", "--help", "--print_config") or a.startswith("--print_config=") for a in args):
        return
    sub, config = parse_command_line(args)
    if sub is None:
        return
    for section in ("model", "data"):
        node = config.get(section)
        if isinstance(node, dict) and isinstance(node.get("class_path"), str):
            _check_class(section, _full_class_path(node["class_path"]), _init_args(node))
    if sub == "predict" and _is(config.get("model"), "StrategyModule"):
        _check_strategy_module(_init_args(config.get("model")))
    if _is(config.get("data"), "QAGroupsDataModule"):
        _check_qa_data(_init_args(config.get("data")))


def _full_class_path(path: str) -> str:
    if "." in path:
        return path
    for package in ("lightning_modules", "datamodules"):
        if class_params(f"{package}.{path}") is not None:
            return f"{package}.{path}"
    return path


def _is(node: Any, name: str) -> bool:
    return isinstance(node, dict) and str(node.get("class_path", "")).rsplit(".", 1)[-1] == name


def _init_args(node: Any) -> dict[str, Any]:
    if not isinstance(node, dict):
        return {}
    init = dict(node.get("init_args") or {})
    init.update({k: v for k, v in node.items() if k not in ("class_path", "init_args", "dict_kwargs")})
    return init


def _check_class(section: str, class_path: str, init: dict[str, Any]) -> None:
    if not class_path.startswith(("lightning_modules.", "datamodules.")):
        return  # someone else's class: LightningCLI checks it
    params = class_params(class_path)
    if params is None:
        return
    by_name = {p.name: p for p in params}
    short = class_path.rsplit(".", 1)[-1]
    for key, value in init.items():
        if key not in by_name:
            raise OptionError(f"{section}.init_args.{key}: {short} has no option {key!r}; accepted: "
                              f"{', '.join(by_name)}")
        choices = literal_choices(by_name[key].annotation)
        if choices is not None:
            problem = choice_problem(f"{section}.init_args.{key}", value, choices)
            if problem:
                raise OptionError(problem)
            continue
        problem = _type_problem(by_name[key].annotation, value)
        if problem:
            raise OptionError(f"{section}.init_args.{key}: {problem}")


def literal_choices(annotation: str) -> tuple[Any, ...] | None:
    """The values of a ``Literal[...]`` annotation (``None`` among them when it is
    ``Literal[...] | None``), read from its source text; None when it is no Literal."""
    parts = [p.strip() for p in annotation.split("|")] if annotation else []
    values: list[Any] = []
    found = False
    for part in parts:
        if part == "None":
            values.append(None)
            continue
        try:
            node = ast.parse(part, mode="eval").body
        except SyntaxError:
            return None
        if not (isinstance(node, ast.Subscript) and getattr(node.value, "id", None) == "Literal"):
            return None
        items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        values += [ast.literal_eval(item) for item in items]
        found = True
    return tuple(values) if found else None


def choice_problem(key: str, value: Any, choices: tuple[Any, ...]) -> str | None:
    """The one-line refusal of ``value`` for an option with these choices, or None."""
    if value in choices:
        return None
    shown = ", ".join("null" if c is None else str(c) for c in choices)
    return f"{key} must be one of {shown}; got {value!r}"


def check_literals(function, values: dict[str, Any], section: str = "model") -> None:
    """Refuse a value outside its parameter's ``Literal`` choices: what jsonargparse checks
    for the command line, for a module built in Python. The choices are read from
    ``function``'s own annotations, the one place they are declared.

    Raises:
        OptionError: naming ``{section}.{parameter}`` and the accepted values.
    """
    import inspect

    for name, param in inspect.signature(function).parameters.items():
        annotation = param.annotation if isinstance(param.annotation, str) else ""
        choices = literal_choices(annotation)
        if choices is not None and name in values:
            problem = choice_problem(f"{section}.{name}", values[name], choices)
            if problem:
                raise OptionError(problem)


def check_strategy_choice(strategies: Any, strategy_options: Any, accepted: dict[str, tuple[str, ...]],
                          section: str = "model.init_args") -> None:
    """The rules of ``model.strategies`` and ``model.strategy_options``, for the early check
    (``accepted`` read from the strategies' source) and for ``StrategyModule`` (from the
    registry) alike: at least one strategy, none twice, every one registered, options only
    for listed strategies and only the options each one takes.

    Raises:
        OptionError: naming the option and the accepted values.
    """
    if not isinstance(strategies, list):
        return
    if not strategies:
        raise OptionError(f"{section}.strategies is empty; name at least one strategy")
    if len(set(strategies)) != len(strategies):
        raise OptionError(f"{section}.strategies lists a strategy twice: {strategies}")
    for name in strategies:
        if name not in accepted:
            raise OptionError(f"{section}.strategies: unknown strategy {name!r}; registered "
                              f"strategies: {', '.join(sorted(accepted))}")
    if not isinstance(strategy_options, dict):
        return
    for name, opts in strategy_options.items():
        if name not in strategies:
            raise OptionError(f"{section}.strategy_options names {name!r}, which is not in "
                              f"model.strategies {strategies}")
        for key in (opts or {}):
            if key not in accepted[name]:
                raise OptionError(f"{section}.strategy_options.{name}: strategy {name!r} has no "
                                  f"option {key!r}; accepted: {', '.join(accepted[name]) or 'none'}")


def _type_problem(annotation: str, value: Any) -> str | None:
    """What is wrong with ``value`` for a simple annotation, or None (also when unsure)."""
    parts = [p.strip() for p in annotation.split("|")] if annotation else []
    if not parts:
        return None
    if value is None:
        return None if "None" in parts else f"must not be null (expected {annotation})"
    checks = {
        "bool": lambda v: isinstance(v, bool),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "str": lambda v: isinstance(v, (str, int, float)) and not isinstance(v, bool),
        "list[str]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        "list[int]": lambda v: isinstance(v, list) and all(isinstance(x, int) for x in v),
    }
    known = [p for p in parts if p != "None"]
    if not all(p in checks for p in known):
        return None  # a type this check does not read
    if any(checks[p](value) for p in known):
        return None
    return f"expected {annotation}, got {value!r}"


def _check_strategy_module(init: dict[str, Any]) -> None:
    from paralleldecode.run_folder import refuse_overwrite

    specs = registered_strategies()
    check_strategy_choice(init.get("strategies"), init.get("strategy_options"),
                          {name: tuple(spec.options) for name, spec in specs.items()})
    model_name = init.get("model_name")
    if isinstance(model_name, str) and _looks_local(model_name) and not Path(os.path.expanduser(model_name)).exists():
        raise OptionError(f"model.init_args.model_name {model_name}: no such file or folder")
    output_dir = init.get("output_dir")
    refuse_overwrite(os.path.expanduser(output_dir) if isinstance(output_dir, str) else None,
                     bool(init.get("resume", False)))


def _check_qa_data(init: dict[str, Any]) -> None:
    from paralleldecode.data.records import DataError
    from paralleldecode.data.registry import check_options, dataset_names

    dataset = init.get("dataset", "demo")
    if dataset not in dataset_names():
        raise DataError(f"data.dataset: unknown data set {dataset!r}; registered: {', '.join(dataset_names())}")
    options = init.get("dataset_options")
    if isinstance(options, dict):
        check_options(dataset, options, label="data.dataset_options: ")
    path = init.get("data_path")
    if isinstance(path, str):
        expanded = os.path.expandvars(os.path.expanduser(path))
        if "$" in expanded:
            raise DataError(f"data.data_path {path}: the environment variable in it is not set")
        if _looks_local(expanded) and not Path(expanded).exists():
            raise DataError(f"data.data_path {expanded}: no such file or folder")


_LOCAL = re.compile(r"^(/|\./|\.\./|~)|\.(json|jsonl|parquet|gguf|txt|csv)$")


def _looks_local(name: str) -> bool:
    return bool(_LOCAL.search(name))
