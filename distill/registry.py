"""Registries by short name: the only list of valid names for verifiers, filters, prompt
sources and backends.

Help text, `distill ls` and validation errors all read the registry, so a name cannot be
valid in one place and unknown in another. A registry holds three kinds of names:

- built-ins and anything else registered with the `register` decorator;
- plug-ins: entry points of installed distributions in the registry's group
  (`distill.verifiers`, `distill.filters`, `distill.prompt_sources`, `distill.backends`),
  read on the first lookup or listing and imported only when their name is looked up;
- dotted names, `package.module:attribute`, imported when a recipe names them.

A plug-in (entry point or dotted name) is either an object the `register` decorator
registered when its module was imported (that entry is used), or a plain callable: its
docstring's first line is the summary, and optional attributes `params` (a Params
subclass), `example` and `uses_model` fill in the rest. A plug-in that cannot be loaded is
not in the registry, and `unknown(name)` says why, so validation reports it as a problem.
"""

from __future__ import annotations

import difflib
import importlib
import re
import threading
import types
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

from distill.schema import Strict


class Params(Strict):
    """Base for a component's recipe parameters: unknown keys are errors, never ignored."""


@dataclass(frozen=True)
class Entry:
    name: str
    fn: Any
    params: type[Params]
    summary: str
    example: str
    # It runs a model (an LLM judge): the sample stage runs it after the teacher's batch, not during.
    uses_model: bool = False
    # Where a plug-in came from ("entry point 'x' (pkg.mod:fn) of distribution pkg 1.0"); "" for code
    # registered in-process. Error messages cite it; `reset_plugins` forgets these entries.
    origin: str = ""


class PluginError(Exception):
    """A plug-in that cannot be used: the message names it, where it came from and why."""


DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def is_dotted(name: str) -> bool:
    """`package.module:attribute`, the form a recipe uses for code that is not registered."""
    return bool(DOTTED.fullmatch(name))


def closest(name: str, choices: list[str]) -> str | None:
    match = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return match[0] if match else None


class Registry:
    def __init__(self, kind: str, group: str | None = None, builtins: Callable[[], None] | None = None,
                 check: Callable[[Entry], str | None] | None = None):
        """`group`: the entry-point group plug-ins register under; `builtins`: called once, on
        the first lookup, to register the built-ins (for registries whose modules are costly to
        import); `check`: what a plug-in must satisfy beyond the signature, as a problem message or None."""
        self.kind = kind
        self.group = group
        self._builtins = builtins
        self._check = check
        self._entries: dict[str, Entry] = {}
        self._plugins: dict[str, Any] | None = None  # entry-point name -> EntryPoint, read once
        self._dotted: dict[str, Entry] = {}
        self._broken: dict[str, str] = {}  # name -> why it cannot be used
        self._origin = ""  # the plug-in being imported, stamped on what it registers
        # Reentrant: importing a plug-in runs its decorators, which register here.
        self._lock = threading.RLock()

    def register(self, name: str, *, params: type[Params] = Params, example: str = "",
                 uses_model: bool = False) -> Callable:
        """Decorator: the function's docstring first line is its summary in `distill ls`."""

        def wrap(fn):
            with self._lock:
                if name in self._entries:
                    raise ValueError(f"{self.kind} {name!r} is registered twice "
                                     f"(by {_where(self._entries[name].fn)} and {_where(fn)})")
                self._entries[name] = Entry(name, fn, params, _summary(fn), example.strip(), uses_model, self._origin)
            return fn

        return wrap

    def names(self) -> list[str]:
        """Registered names and plug-in entry-point names (not dotted names: those are open-ended)."""
        with self._lock:
            self._ready()
            return sorted(set(self._entries) | set(self._plugins or ()))

    def __contains__(self, name: str) -> bool:
        return self._lookup(name) is not None

    def __iter__(self) -> Iterator[Entry]:
        """Every named entry; a plug-in that cannot be loaded is listed with why in its summary,
        and calling it raises PluginError."""
        for name in self.names():
            entry = self._lookup(name)
            yield entry or Entry(name, _unusable(self._broken[name]), Params, f"cannot be used: {self._broken[name]}", "")

    def get(self, name: str) -> Entry:
        entry = self._lookup(name)
        if entry is None:
            raise KeyError(self.unknown(name))
        return entry

    def unknown(self, name: str) -> str:
        """The message for a name not in the registry: why a plug-in failed to load, or what is
        allowed and the closest match."""
        if not isinstance(name, str):
            name = str(name)
        with self._lock:
            if self._lookup(name) is None and name in self._broken:
                return self._broken[name]
        names = self.names()
        dotted = "; or a dotted name, package.module:attribute"
        if not names:
            return f"unknown {self.kind} {name!r}: none are registered yet{dotted}"
        hint = closest(name, names)
        tail = f" (did you mean {hint!r}?)" if hint else ""
        return f"unknown {self.kind} {name!r}{tail}; registered: {', '.join(names)}{dotted}"

    def reset_plugins(self) -> None:
        """Forget plug-ins, dotted names and what they registered; entry points are read again on
        the next lookup (for tests that install and remove plug-ins)."""
        with self._lock:
            self._entries = {n: e for n, e in self._entries.items() if not e.origin}
            self._plugins, self._dotted, self._broken = None, {}, {}

    def _ready(self) -> None:
        if self._builtins is not None:
            load, self._builtins = self._builtins, None
            load()
        if self._plugins is None:
            self._plugins = self._discover()

    def _discover(self) -> dict[str, Any]:
        if self.group is None:
            return {}
        from importlib.metadata import entry_points

        found: dict[str, Any] = {}
        for ep in entry_points(group=self.group):
            # A name claimed twice is ambiguous: neither claim wins silently.
            if ep.name in found:
                self._broken[ep.name] = (f"{self.kind} {ep.name!r} is claimed by two plug-ins, {_describe(found[ep.name])} "
                                         f"and {_describe(ep)}; uninstall one")
            elif ep.name in self._entries and not _same_package(self._entries[ep.name].fn, ep.module):
                self._broken[ep.name] = (f"{self.kind} {ep.name!r} is registered by {_where(self._entries[ep.name].fn)} "
                                         f"and claimed by {_describe(ep)}; rename the entry point")
            found[ep.name] = ep
        return found

    def _lookup(self, name: str) -> Entry | None:
        if not isinstance(name, str):
            return None
        with self._lock:
            self._ready()
            if name in self._broken:
                return None
            entry = self._entries.get(name) or self._dotted.get(name)
            if entry is not None:
                return entry
            try:
                if name in self._plugins:
                    entry = self._checked(name, self._load_entry_point(self._plugins[name]))
                    self._entries[name] = entry
                elif is_dotted(name):
                    entry = self._checked(name, self._load_dotted(name))
                    self._dotted[name] = entry
            except PluginError as e:
                self._broken[name] = str(e)
                return None
            return entry

    def _checked(self, name: str, entry: Entry) -> Entry:
        problem = self._check(entry) if self._check else None
        if problem:
            origin = "" if entry.origin == f"dotted name {name!r}" else entry.origin  # the name already says it
            raise PluginError(f"{self.kind} {name!r}{f' ({origin})' if origin else ''}: {problem}")
        return entry

    def _load_entry_point(self, ep) -> Entry:
        origin = f"entry point {_describe(ep)}"
        try:
            with self._importing(origin):
                obj = ep.load()
        except Exception as e:
            raise PluginError(f"{self.kind} {ep.name!r}: {origin} cannot be loaded: {type(e).__name__}: {e}; "
                              "fix that distribution or uninstall it") from e
        entry = self._entry_for(ep.name, obj, origin, module=ep.module)
        return entry if entry.name == ep.name else replace(entry, name=ep.name)  # the entry point's name is public

    def _load_dotted(self, name: str) -> Entry:
        module_name, _, attribute = name.partition(":")
        origin = f"dotted name {name!r}"
        what = f"{self.kind} {name!r}"
        try:
            with self._importing(origin):
                obj = importlib.import_module(module_name)
        except Exception as e:
            raise PluginError(f"{what}: cannot import module {module_name!r} ({type(e).__name__}: {e}); a dotted "
                              "name is package.module:attribute, importable by this Python") from e
        for part in attribute.split("."):
            if not hasattr(obj, part):
                public = [a for a in dir(obj) if not a.startswith("_")]
                hint = closest(part, public)
                raise PluginError(f"{what}: {getattr(obj, '__name__', module_name)!r} has no attribute {part!r}"
                                  + (f" (did you mean {hint!r}?)" if hint else ""))
            obj = getattr(obj, part)
        return self._entry_for(name, obj, origin, module=module_name)

    def _entry_for(self, name: str, obj: Any, origin: str, module: str) -> Entry:
        """The entry a loaded plug-in object stands for: the one its module registered, else one
        made from the object itself."""
        what = f"{self.kind} {name!r} ({origin})"
        if isinstance(obj, types.ModuleType):  # an entry point naming a module: importing it registers the name
            if name in self._entries:
                return self._entries[name]
            own = [n for n, e in self._entries.items() if getattr(e.fn, "__module__", None) == obj.__name__]
            raise PluginError(f"{what}: module {obj.__name__!r} was imported but registers no {self.kind} named "
                              f"{name!r}" + (f" (it registers {', '.join(own)})" if own else ""))
        for entry in self._entries.values():
            if entry.fn is obj:
                return entry
        if not callable(obj):
            raise PluginError(f"{what}: {module}.{getattr(obj, '__qualname__', type(obj).__name__)} is "
                              f"a {type(obj).__name__}, not a function or class")
        params = getattr(obj, "params", Params)
        if not (isinstance(params, type) and issubclass(params, Params)):
            raise PluginError(f"{what}: its `params` attribute must be a subclass of distill.registry.Params "
                              f"(so unknown recipe keys are errors), not {params!r}")
        return Entry(name, obj, params, _summary(obj), str(getattr(obj, "example", "")).strip(),
                     bool(getattr(obj, "uses_model", False)), origin)

    @contextmanager
    def _importing(self, origin: str):
        before, self._origin = self._origin, origin
        try:
            yield
        finally:
            self._origin = before


def _summary(fn) -> str:
    doc = (getattr(fn, "__doc__", None) or "").strip().splitlines()
    return doc[0] if doc else ""


def _where(fn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _same_package(fn, module: str) -> bool:
    """The registered function comes from the plug-in's own package (it registered itself, and
    its module was imported before the entry points were read)."""
    return getattr(fn, "__module__", "").split(".")[0] == module.split(".")[0]


def _describe(ep) -> str:
    dist = getattr(ep, "dist", None)
    owner = f"{dist.name} {dist.version}" if dist is not None else "an unknown distribution"
    return f"{ep.name!r} ({ep.value}) of distribution {owner}"


def _unusable(message: str) -> Callable:
    def fail(*args, **kwargs):
        raise PluginError(message)

    return fail
