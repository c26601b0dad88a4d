"""The method flags of ``onebit quantize`` / ``onebit distill``, generated from the config dataclasses.

Every field of every registered method's config (``onebit.methods.BUILTIN_MODULES``) becomes a flag,
so a new method adds no CLI code:

* ``--field-name`` (plus ``metadata["aliases"]``, older spellings kept working); a bool is
  ``--x/--no-x``; a ``list`` field is repeatable; a ``dict`` field, or one with
  ``metadata["cli"] = False`` (filled by quantization), gets no flag;
* choices from ``metadata["choices"]`` or a ``Literal[...]`` annotation (when every method that has
  the field declares them; otherwise the method's ``validate`` checks the value);
* help from ``metadata["help"]``, prefixed with the methods that have the field.

The configs are read by **parsing** the method modules' source (``ast``), not by importing them: the
method modules import torch, and building the parser must not (``onebit --help`` answers at once).
``tests/cli/test_method_flags.py`` checks that what the parse finds equals the real dataclasses.

Shared fields.  A field name several methods have is one flag.  Its default on the command line is
"not given", and the chosen method's own default applies; the help lists each method's default when
they differ (``--act-bits``: 0, but 8 for bitnet, ternary, onebit-w1a8).  A flag given for a method
that has no such field is an error, not silently ignored.

Clashes with a command's own flags.  A command's flag keeps its spelling (``onebit distill --alpha``
is the hidden-state loss weight): the field is then offered under its other spellings
(``--awq-alpha``), or else as ``--<method>-<field-name>`` (``--rtn-clip``).  A command that
writes a field's flag by hand (``dest`` the field's name, default ``None``) keeps it, and the
generator reads that flag for the field; a command's own flags use other dests (distill's
``--seed`` is ``train_seed``).
"""
from __future__ import annotations

import argparse
import ast
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
import dataclasses

from ..errors import OneBitError

_PKG = Path(__file__).resolve().parents[1]  # src/onebit
_MISSING = object()


class _Unresolved(Exception):
    pass


# --------------------------------------------------------------------------- reading the source
@lru_cache(maxsize=None)
def _module(name: str) -> dict:
    """``{"classes", "imports", "consts"}`` of module ``onebit.x.y`` (its top-level statements)."""
    parts = name.split(".")[1:]
    path = _PKG.joinpath(*parts).with_suffix(".py")
    is_pkg = not path.is_file()
    if is_pkg:
        path = _PKG.joinpath(*parts, "__init__.py")
    tree = ast.parse(path.read_text(), str(path))
    package = name.split(".") if is_pkg else name.split(".")[:-1]
    classes, imports, consts = {}, {}, {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            classes[node.name] = node
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            for a in node.names:
                imports[a.asname or a.name] = (base, a.name)
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            consts[node.targets[0].id] = node.value
    return {"classes": classes, "imports": imports, "consts": consts, "name": name}


def _lookup(mod: str, name: str, kind: str):
    """``(module, node)`` of ``name`` as seen from ``mod`` (following ``from X import name``)."""
    for _ in range(20):
        m = _module(mod)
        if name in m[kind]:
            return mod, m[kind][name]
        if name in m["imports"] and m["imports"][name][0].startswith("onebit"):
            mod, name = m["imports"][name]
            continue
        raise _Unresolved(f"{name} in {mod}")
    raise _Unresolved(name)


def _value(mod: str, node: ast.expr):
    """The Python value of a default / metadata expression: literals and module constants."""
    if isinstance(node, ast.Name):
        return _value(*_lookup(mod, node.id, "consts"))
    if isinstance(node, (ast.Tuple, ast.List)):
        vals = [_value(mod, e) for e in node.elts]
        return tuple(vals) if isinstance(node, ast.Tuple) else vals
    if isinstance(node, ast.Dict):
        return {_value(mod, k): _value(mod, v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "float" \
            and len(node.args) == 1:
        return float(_value(mod, node.args[0]))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):  # "a " "b" is one Constant already
        return _value(mod, node.left) + _value(mod, node.right)
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise _Unresolved(ast.unparse(node)) from None


@dataclass
class _Decl:
    """One class's declaration of a field."""

    annotation: str
    default: object = _MISSING          # _MISSING: none declared here (or a default_factory)
    factory: str | None = None          # source of a default_factory
    metadata: dict = field(default_factory=dict)


def _class(mod: str, name: str) -> dict:
    mod, node = _lookup(mod, name, "classes")
    decls, method = {}, None
    for st in node.body:
        if isinstance(st, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "method" for t in st.targets):
            method = _value(mod, st.value)
        if not (isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name)):
            continue
        ann = ast.unparse(st.annotation)
        if st.target.id == "method" or ann.startswith(("ClassVar", "typing.ClassVar")):
            if st.target.id == "method" and st.value is not None:
                method = _value(mod, st.value)
            continue
        d = _Decl(ann)
        v = st.value
        if isinstance(v, ast.Call) and ast.unparse(v.func) in ("field", "dataclasses.field"):
            for kw in v.keywords:
                if kw.arg == "default":
                    d.default = _value(mod, kw.value)
                elif kw.arg == "default_factory":
                    d.factory = ast.unparse(kw.value)
                elif kw.arg == "metadata":
                    d.metadata = _value(mod, kw.value)
        elif v is not None:
            d.default = _value(mod, v)
        decls[st.target.id] = d
    bases = [(mod, ast.unparse(b)) for b in node.bases]
    return {"key": (mod, name), "method": method, "decls": decls, "bases": bases,
            "doc": (ast.get_docstring(node) or "").split("\n\n")[0].replace("\n", " ")}


def _mro(mod: str, name: str) -> list[dict]:
    """C3 linearisation of the config class (classes outside onebit end it)."""
    cls = _class(mod, name)
    bases = [b for b in cls["bases"] if _resolvable(*b)]
    seqs = [_mro(*b) for b in bases] + [[_class(*b) for b in bases]]
    out = [cls]
    seqs = [list(s) for s in seqs if s]
    while seqs:
        for s in seqs:
            head = s[0]
            if not any(head["key"] == t["key"] for o in seqs for t in o[1:]):
                break
        else:
            raise _Unresolved(f"inconsistent MRO of {name}")
        out.append(head)
        seqs = [[c for c in s if c["key"] != head["key"]] for s in seqs]
        seqs = [s for s in seqs if s]
    return out


def _resolvable(mod: str, name: str) -> bool:
    try:
        _lookup(mod, name, "classes")
        return True
    except _Unresolved:
        return False


@dataclass
class FieldSpec:
    name: str
    annotation: str
    default: object        # the method's default (a factory's source when it has one)
    help: str
    metadata: dict
    origin: tuple          # (module, class) that first declares the field (its group)


@dataclass
class MethodSpec:
    method: str
    key: tuple             # (module, class) of the config
    fields: dict           # name -> FieldSpec, in dataclass order
    origins: dict          # (module, class) -> first docstring paragraph


def _spec(mod: str, name: str) -> MethodSpec:
    mro = _mro(mod, name)
    fields = {}
    for cls in reversed(mro):  # dataclass order: base fields first, a redeclaration keeps the place
        for fname in cls["decls"]:
            fields.setdefault(fname, None)
    for fname in fields:
        decl = [c for c in mro if fname in c["decls"]]
        own = decl[0]["decls"][fname]
        meta = next((c["decls"][fname].metadata for c in decl if c["decls"][fname].metadata), {})
        default = own.default if own.factory is None else f"{own.factory}()"
        fields[fname] = FieldSpec(fname, own.annotation, default, meta.get("help", ""), meta, decl[-1]["key"])
    return MethodSpec(mro[0]["method"], mro[0]["key"], fields, {c["key"]: c["doc"] for c in mro})


@lru_cache(maxsize=None)
def method_specs() -> tuple[MethodSpec, ...]:
    """Every built-in registered config, read from the source (torch-free)."""
    from ..methods import BUILTIN_MODULES  # its __init__ imports no method

    out = []
    for short in BUILTIN_MODULES:
        mod = f"onebit.methods.{short}"
        for node in _module(mod)["classes"].values():
            for dec in node.decorator_list:
                if isinstance(dec, ast.Call) and ast.unparse(dec.func).endswith("register_method") \
                        and dec.args and isinstance(dec.args[0], ast.Name):
                    out.append(_spec(mod, dec.args[0].id))
    return tuple(out)


def method_names() -> list[str]:
    return [s.method for s in method_specs()]


# --------------------------------------------------------------------------- the flags
_TYPES = {"int": int, "float": float, "str": str}


def _kind(annotation: str):
    """``("bool"|"list"|"dict"|"value", type, choices)`` of an annotation string."""
    a = annotation.replace("Optional[", "").replace("typing.", "").strip()
    parts = [p.strip().rstrip("]") for p in a.split("|") if p.strip() not in ("None", "")]
    a = parts[0] if parts else "str"
    if a.startswith("Literal["):
        vals = ast.literal_eval(f"({annotation.split('Literal[', 1)[1].rsplit(']', 1)[0]},)")
        return "value", type(vals[0]), tuple(vals)
    if a == "bool":
        return "bool", None, None
    if a.startswith(("list", "List")):
        return "list", str, None
    if a.startswith(("dict", "Dict")):
        return "dict", None, None
    return "value", _TYPES.get(a, str), None


def _show(v) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v)) or "none"
    return "none" if v is None else str(v)


def _help(name: str, specs: list[MethodSpec], everyone: bool) -> str:
    methods = [s.method for s in specs]
    texts: dict[str, list[str]] = {}
    for s in specs:
        texts.setdefault(s.fields[name].help or f"the {name} setting", []).append(s.method)
    if len(texts) == 1:
        text = next(iter(texts))
    else:
        text = "; ".join(f"{', '.join(ms)}: {t}" for t, ms in texts.items())
    if "default" not in text.lower():
        by: dict[str, list[str]] = {}
        for s in specs:
            by.setdefault(_show(s.fields[name].default), []).append(s.method)
        if len(by) == 1:
            text += f" (default: {next(iter(by))})"
        else:
            common = max(by, key=lambda k: len(by[k]))
            text += f" (default: {common}; " + "; ".join(
                f"{d} for {', '.join(ms)}" for d, ms in by.items() if d != common) + ")"
    return (text if everyone else f"[{', '.join(methods)}] {text}").replace("%", "%%")


def add_method_flags(p: argparse.ArgumentParser) -> None:
    """Add a flag for every config field of every built-in method to ``p`` (see the module doc).
    Call it after the command's own flags, so they keep their spellings."""
    specs = method_specs()
    names: dict[str, list[MethodSpec]] = {}
    for s in specs:
        for fname in s.fields:
            names.setdefault(fname, []).append(s)
    groups: dict[tuple, argparse._ArgumentGroup] = {}
    info: dict[str, dict] = {}
    for fname, have in names.items():
        fs = [s.fields[fname] for s in have]
        if any(f.metadata.get("cli") is False for f in fs):
            continue
        kinds = {_kind(f.annotation)[:2] for f in fs}
        if len(kinds) > 1:
            raise RuntimeError(f"config field '{fname}' has different types in {[s.method for s in have]}")
        kind, typ, lit = _kind(fs[0].annotation)
        if kind == "dict" or (kind == "list" and not all(f.help for f in fs)):
            continue  # a list without help is an output of quantization (e.g. input_scaled)
        spellings = [f"--{fname.replace('_', '-')}"] + [a for f in fs for a in f.metadata.get("aliases", ())]
        spellings = list(dict.fromkeys(spellings))
        own = next((a for a in p._actions if a.dest == fname), None)
        if own is not None:  # the command writes this field's flag itself ("not given": None)
            if own.default is not None:
                raise RuntimeError(f"{p.prog}: flag {own.option_strings} has the dest of config field "
                                   f"'{fname}' but a default; give it another dest")
            info[fname] = {"dest": fname, "flag": spellings[0], "methods": [s.method for s in have]}
            continue
        free = [sp for sp in spellings if sp not in p._option_string_actions]
        if not free:
            origin_method = next((s.method for s in specs if s.key == fs[0].origin), have[0].method)
            free = [f"--{origin_method}-{fname.replace('_', '-')}"]
        dest = fname
        origin = fs[0].origin
        if origin not in groups:
            under = [s.method for s in specs if origin in s.origins]
            title = ("every method" if len(under) == len(specs) else ", ".join(under))
            groups[origin] = p.add_argument_group(f"method settings: {title}", have[0].origins[origin] or None)
        kw: dict = {"dest": dest, "default": None,
                    "help": _help(fname, have, len(have) == len(specs))}
        choices = [f.metadata.get("choices") or lit for f in fs]
        if kind == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = typ
            if kind == "list":
                kw["action"] = "append"
            if all(choices):
                kw["choices"] = list(dict.fromkeys(c for cs in choices for c in cs))
            meta = next((f.metadata["metavar"] for f in fs if "metavar" in f.metadata), None)
            if meta:
                kw["metavar"] = meta
        groups[origin].add_argument(*free, **kw)
        info[fname] = {"dest": dest, "flag": free[0], "methods": [s.method for s in have]}
    p.set_defaults(method_flags=info)


def build_config(args):
    """The ``--method`` config from the generated flags; a flag the method lacks is an error."""
    from ..registry import get_handler_cls

    cls = get_handler_cls(args.method).config_cls
    info = getattr(args, "method_flags", None) or {}
    have = {f.name for f in dataclasses.fields(cls)}
    for fname, i in info.items():
        if fname not in have and getattr(args, i["dest"], None) is not None:
            raise OneBitError(f"{i['flag']} is not a setting of method '{args.method}' "
                              f"(it is one of {', '.join(i['methods'])})")
    kwargs = {f: getattr(args, info[f]["dest"]) for f in have
              if f in info and getattr(args, info[f]["dest"], None) is not None}
    try:
        cfg = cls(**kwargs)
        cfg.validate()
    except (TypeError, ValueError) as e:
        raise OneBitError(str(e))
    return cfg
