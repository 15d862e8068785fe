"""Stage registry: built-in stage types and third-party ones from the ``tiledsr.stages`` entry points.

Stage modules, built-in or plug-in, are imported only when their type is named. A plug-in
cannot replace a built-in type: an entry point with a built-in's name is ignored (and marked
so by :func:`plugin_types`); of two plug-ins with the same name, the one found first on
``sys.path`` is used. A plug-in that fails to import, does not resolve, or does not load a
proper :class:`Stage` subclass is a :class:`~tiledsr.errors.PresetError` naming it.
"""
from __future__ import annotations

import dataclasses
import importlib
from importlib import metadata
from typing import NamedTuple

from ..config import closest
from ..errors import PresetError
from ..text import brief, show
from .base import Runtime, Stage, StageTiling, Tiling

__all__ = ["ENTRY_POINT_GROUP", "PluginType", "Runtime", "Stage", "StageTiling", "Tiling", "builtin_types",
           "plugin_types", "stage_class", "stage_types"]

_BUILTIN = {
    "resize": "tiledsr.stages.resize:ResizeStage",
    "sr": "tiledsr.stages.sr:SRStage",
    "latent-x2": "tiledsr.stages.latent_x2:LatentX2Stage",
    "img2img": "tiledsr.stages.img2img:Img2ImgStage",
    "sd-x4": "tiledsr.stages.sd_x4:SDX4Stage",
    "txt2img": "tiledsr.stages.txt2img:Txt2ImgStage",
    "colorfix": "tiledsr.stages.colorfix:ColorfixStage",
    "seamfix": "tiledsr.stages.seamfix:SeamfixStage",
}
ENTRY_POINT_GROUP = "tiledsr.stages"


class PluginType(NamedTuple):
    """A stage type registered by an installed distribution; ``ignored`` says why it is not used ('' if it is)."""

    name: str
    dist: str
    version: str
    ignored: str = ""


def _dist(ep: metadata.EntryPoint) -> tuple[str, str]:
    """(distribution name, version) of an entry point, '?' where unknown."""
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "?", "?"
    return show(dist.metadata.get("Name") or "?", 60), show(dist.version or "?", 30)


def _entry_points() -> list[metadata.EntryPoint]:
    """Every entry point of the group, in ``sys.path`` order."""
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def _plugins(eps: list[metadata.EntryPoint] | None = None) -> dict[str, metadata.EntryPoint]:
    """Plug-in name -> the entry point used for it: built-in names left out, the first one found wins."""
    found: dict[str, metadata.EntryPoint] = {}
    for ep in _entry_points() if eps is None else eps:
        if ep.name not in _BUILTIN:
            found.setdefault(ep.name, ep)
    return found


def builtin_types() -> list[str]:
    """Names of the built-in stage types."""
    return list(_BUILTIN)


def plugin_types() -> list[PluginType]:
    """Every stage type installed plug-ins register, sorted by name, with its distribution and version;
    imports nothing. Entries that are not used say why in ``ignored``."""
    eps = _entry_points()
    used = _plugins(eps)
    rows = []
    for ep in eps:
        dist, version = _dist(ep)
        if ep.name in _BUILTIN:
            why = "a built-in type has this name; the built-in is used"
        elif used[ep.name] is not ep:
            why = f"{_dist(used[ep.name])[0]} registers it too and comes first on sys.path"
        else:
            why = ""
        rows.append(PluginType(show(ep.name, 60), dist, version, why))
    return sorted(rows, key=lambda r: (r.name, r.ignored != "", r.dist))


def stage_types() -> list[str]:
    """Names of every stage type: built-in first, then plugins."""
    return list(_BUILTIN) + sorted(_plugins())


def stage_class(name: str, where: str = "stage") -> type[Stage]:
    """The Stage subclass for type ``name``; PresetError naming the closest type if unknown, or
    naming the plug-in and its distribution if it fails to load."""
    if name in _BUILTIN:
        module, attr = _BUILTIN[name].split(":")
        return getattr(importlib.import_module(module), attr)
    plugin = _plugins().get(name)
    if plugin is None:
        raise PresetError(
            f"{where}: unknown stage type {name!r}{closest(name, stage_types())}; "
            f"known types: {', '.join(stage_types())}"
        )
    return _load(plugin, where)


def _load(ep: metadata.EntryPoint, where: str) -> type[Stage]:
    """The class an entry point names, checked to be a usable Stage subclass."""
    dist, version = _dist(ep)
    who = (f"{where}: stage plug-in {show(ep.name, 60)!r} (entry point {show(ep.value, 120)!r} of "
           f"{dist} {version})")
    fix = (f"fix or reinstall {dist}, or uninstall it (pip uninstall {dist}) and use another stage type"
           if dist != "?" else "fix or remove the package that provides it, or use another stage type")
    # 1. Import the module: a module that raises is the plug-in's own bug.
    try:
        module_name, attrs = ep.module, [a for a in (ep.attr or "").split(".") if a]
    except Exception:  # noqa: BLE001 - a malformed value, 'module:attr' expected
        raise PresetError(f"{who} is not of the form 'module:Class'; {fix}") from None
    try:
        obj = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # a third party's import: anything may come out
        gone = exc.name if isinstance(exc, ModuleNotFoundError) else None
        missing = gone is not None and (module_name == gone or module_name.startswith(gone + "."))
        what = f"module {module_name!r} is not installed" if missing else (
            f"importing {module_name!r} raised {type(exc).__name__}: {brief(exc)}")
        raise PresetError(f"{who} failed to load: {what}; {fix}") from exc
    # 2. Resolve the attribute path.
    for i, attr in enumerate(attrs):
        try:
            obj = getattr(obj, attr)
        except Exception as exc:  # noqa: BLE001 - AttributeError, or a module __getattr__ that raises
            raise PresetError(f"{who} does not resolve: {module_name!r} has no "
                              f"{'.'.join(attrs[:i + 1])!r}; {fix}") from exc
    # 3. Check it is a Stage subclass declaring what the planner reads.
    problem = _not_a_stage(obj, ep.name)
    if problem:
        raise PresetError(f"{who} is not a usable stage: {problem}; {fix}")
    return obj


def _not_a_stage(obj: object, name: str) -> str | None:
    """What keeps ``obj`` from being the Stage subclass of type ``name``, or None."""
    if not (isinstance(obj, type) and issubclass(obj, Stage)):
        got = f"class {obj.__name__}" if isinstance(obj, type) else f"a {type(obj).__name__}"
        return f"it loads {show(got, 80)}, not a subclass of tiledsr.stages.Stage"
    kind = getattr(obj, "type", None)
    if not isinstance(kind, str):
        return f"{obj.__name__} sets no 'type' (a class attribute, {name!r})"
    if kind != name:
        return f"{obj.__name__}.type is {show(kind, 60)!r} but the entry point registers it as {name!r}"
    config = getattr(obj, "Config", None)
    if not (isinstance(config, type) and dataclasses.is_dataclass(config)):
        return f"{obj.__name__} sets no 'Config' (a frozen dataclass of its options)"
    if obj.output_size is Stage.output_size:
        return f"{obj.__name__} does not implement output_size()"
    if obj.stream is Stage.stream and obj.run is Stage.run:
        return f"{obj.__name__} implements neither stream() nor run()"
    return None
