"""Presets: YAML validated strictly into frozen configs before any model loads.

Every YAML tiledsr parses (preset files, ``--set`` values) goes through the bounded
loader of :mod:`tiledsr.safeyaml`.
"""
from __future__ import annotations

import copy
import dataclasses
import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Sequence

import yaml

from .config import closest, from_mapping, to_mapping
from .text import short
from .errors import PresetError
from .safeyaml import parse_yaml, read_text
from .stages import StageTiling, Tiling, stage_class

__all__ = ["Preset", "StageSpec", "load_preset", "preset_names", "preset_to_yaml"]

# The bundled presets: the top-level ``presets/`` folder of the source tree, which users can read
# and copy; ``tiledsr/presets`` links to it and wheels carry its files there. A checkout without
# symbolic links (the link is then a small text file) finds the folder beside the package.
PRESET_DIR = next((d for d in (Path(__file__).parent / "presets", Path(__file__).parent.parent / "presets")
                   if d.is_dir()), Path(__file__).parent / "presets")
DEVICE_RE = re.compile(r"(auto|cpu|mps|cuda(:\d{1,3})?)\Z")
TYPE_RE = re.compile(r"[^\x00-\x20\x7f-\x9f]{1,64}\Z")  # a stage type name: printable, no spaces, short
MAX_STAGES = 64


@dataclass(frozen=True)
class OutputSettings:
    format: Optional[Literal["png", "jpeg", "tiff", "webp"]] = None
    bit_depth: Optional[Literal[8, 16]] = None


@dataclass(frozen=True)
class _TopLevel(Tiling):
    name: Optional[str] = None
    description: str = ""
    device: str = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    seed: Optional[int] = None
    stages: object = None
    output: object = None

    def check(self) -> str | None:
        if not DEVICE_RE.match(self.device):
            return f"device: expected auto, cpu, cuda, cuda:N or mps, got {short(self.device)}"
        if self.seed is not None and self.seed < 0:
            return f"seed must be >= 0, got {self.seed}"
        return Tiling.check(self)


@dataclass(frozen=True)
class StageSpec:
    """One validated stage: its ``type``, frozen ``config`` and resolved ``tiling``.

    A config with tiling keys holds the resolved values in them (never None)."""

    type: str
    config: Any
    tiling: Tiling


@dataclass(frozen=True)
class Preset:
    """A validated preset."""

    name: str
    description: str
    stages: tuple[StageSpec, ...]
    tiling: Tiling
    device: str
    precision: str
    seed: Optional[int]
    output: OutputSettings


def preset_names() -> list[str]:
    """Bundled preset names, sorted."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _where(s: str) -> str:
    """'preset PATH' for messages, keeping the end of a very long path."""
    text = repr(s)
    return f"preset {text if len(text) <= 160 else repr('…' + s[-150:])}"


def _is_file(s: str) -> bool:
    try:
        return Path(s).is_file()
    except (OSError, ValueError):  # a name too long for a path, say
        return False


def _exists(path: Path) -> bool:
    try:
        path.stat()
        return True
    except OSError as exc:
        return exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG)


def read_preset(name_or_path: str | Path) -> tuple[dict, str]:
    """Parse a bundled preset name or a YAML file into a raw mapping; returns ``(raw, where)``."""
    s = str(name_or_path)
    where = _where(s)
    if "\0" in s:
        raise PresetError(f"{where}: a preset name or path has no NUL character")
    if s.endswith((".yaml", ".yml")) or "/" in s or os.sep in s or _is_file(s):
        path = Path(s)
        if not _exists(path):
            raise PresetError(f"{where}: file not found; check the path")
    else:
        path = PRESET_DIR / f"{s}.yaml"
        if not _is_file(str(path)):
            raise PresetError(f"unknown preset {short(s)}{closest(s, preset_names())}; "
                              f"bundled presets: {', '.join(preset_names())}")
    raw = parse_yaml(read_text(path, where), where, path.name)
    if raw is None:
        raise PresetError(f"{where}: is empty; a preset is a YAML mapping with a 'stages' list")
    if not isinstance(raw, dict):
        raise PresetError(f"{where}: expected a mapping with a 'stages' list, got {type(raw).__name__}")
    raw.setdefault("name", path.stem)
    return raw, where


def _stage_list(raw: dict) -> list:
    return raw["stages"] if isinstance(raw.get("stages"), list) else []


def _apply_set(raw: dict, item: Any) -> None:
    """Apply one ``--set`` item to ``raw`` in place (see :func:`apply_overrides`)."""
    target, sep, text = item.partition("=") if isinstance(item, str) else ("", "", "")
    sel, _, key = target.rpartition(".")
    if not sep or not key:
        raise PresetError(f"--set {short(item)}: expected KEY=VALUE, output.KEY=VALUE or STAGE.KEY=VALUE "
                          "(STAGE: a stage type or index)")
    value = parse_yaml(text, f"--set {short(item)}", "--set value")
    if not sel:
        raw[key] = value
        return
    if sel == "output":
        if raw.get("output") is None:
            raw["output"] = {}
        if not isinstance(raw["output"], dict):
            raise PresetError(f"--set {short(item)}: 'output' in this preset is not a mapping")
        raw["output"][key] = value
        return
    stages = _stage_list(raw)
    chosen = [st for i, st in enumerate(stages) if isinstance(st, dict) and sel in (str(i), st.get("type"))]
    if not chosen:
        types = [st.get("type") for st in stages if isinstance(st, dict)]
        types = list(dict.fromkeys(t for t in types if isinstance(t, str)))[:8]
        choices = ["output", *types, *(str(i) for i in range(len(stages)))]
        raise PresetError(f"--set {short(item)}: no stage {short(sel)} in this preset{closest(sel, choices)}; "
                          f"use output, a stage type ({', '.join(short(t, 20) for t in types)}) "
                          f"or a stage index (0..{max(len(stages) - 1, 0)})")
    for st in chosen:
        st[key] = value


def apply_overrides(raw: dict, top: Mapping[str, Any] = {}, sets: Sequence[str] = ()) -> dict:
    """Return a copy of ``raw`` with ``top`` values, then ``--set`` items, applied.

    ``top`` sets top-level keys; a tiling key there (tile, overlap, blend, batch) also
    clears it in every stage, so it wins over per-stage values (the CLI's --tile, --overlap).
    ``sets`` items are ``KEY=VALUE`` (a top-level key; a tiling key there is the preset-wide
    default, which per-stage values still override), ``output.KEY=VALUE``, ``TYPE.KEY=VALUE``
    (every stage of that type) or ``N.KEY=VALUE`` (stage N, from 0); values are parsed as YAML.
    """
    raw = copy.deepcopy(raw)
    tiling_keys = {f.name for f in dataclasses.fields(Tiling)}
    for key, value in top.items():
        raw[key] = value
        for st in _stage_list(raw):
            if key in tiling_keys and isinstance(st, dict):
                st.pop(key, None)
    for item in sets:
        _apply_set(raw, item)
    return raw


def _stage(st: Any, i: int, tiling: Tiling, where: str) -> StageSpec:
    """Validate stage ``i`` of a preset."""
    at = f"{where}: stages[{i}]"
    kind = st.get("type") if isinstance(st, dict) else None
    if not isinstance(kind, str) or not TYPE_RE.match(kind):
        raise PresetError(f"{at}: expected a mapping with a 'type' (a stage type name), got {short(st)}")
    cls = stage_class(kind, at)
    options = {k: v for k, v in st.items() if k != "type"}
    config = from_mapping(cls.Config, options, f"{at} ({kind})")
    stage_tiling = tiling
    if isinstance(config, StageTiling):
        stage_tiling = config.resolve(tiling)
        config = dataclasses.replace(config, **dataclasses.asdict(stage_tiling))
    problem = stage_tiling.check()
    if problem:
        raise PresetError(f"{at} ({kind}): {problem}")
    return StageSpec(kind, config, stage_tiling)


def _validate(raw: Any, where: str) -> Preset:
    if not isinstance(raw, Mapping):
        raise PresetError(f"{where}: expected a mapping with a 'stages' list, got {type(raw).__name__}")
    top = from_mapping(_TopLevel, raw, where)
    tiling = Tiling(top.tile, top.overlap, top.blend, top.batch)
    output = from_mapping(OutputSettings, top.output, f"{where}: output")
    if not isinstance(top.stages, list) or not top.stages:
        raise PresetError(f"{where}: 'stages' must be a non-empty list of stages, each with a 'type'")
    if len(top.stages) > MAX_STAGES:
        raise PresetError(f"{where}: {len(top.stages)} stages; at most {MAX_STAGES} are allowed")
    specs = tuple(_stage(st, i, tiling, where) for i, st in enumerate(top.stages))
    return Preset(top.name or "custom", top.description, specs, tiling, top.device, top.precision,
                  top.seed, output)


def validate(raw: Any, where: str) -> Preset:
    """Raw mapping -> Preset, or PresetError naming the key path."""
    try:
        return _validate(raw, where)
    except RecursionError:
        raise PresetError(f"{where}: nested too deeply; a preset is a mapping with a 'stages' list") from None


def load_preset(name_or_path: str | Path, top: Mapping[str, Any] = {}, sets: Sequence[str] = ()) -> Preset:
    """Read, override and validate a preset (bundled name or YAML path). No model is loaded."""
    raw, where = read_preset(name_or_path)
    try:
        raw = apply_overrides(raw, top, sets)
    except RecursionError:
        raise PresetError(f"{where}: nested too deeply; a preset is a mapping with a 'stages' list") from None
    return validate(raw, where)


def _stage_doc(spec: StageSpec) -> dict:
    """A stage as a mapping: type, its own keys, then its (resolved) tiling keys."""
    options = to_mapping(spec.config)
    tiling = {k: options.pop(k) for k in [f.name for f in dataclasses.fields(Tiling)] if k in options}
    return {"type": spec.type, **options, **tiling}


def preset_to_yaml(preset: Preset) -> str:
    """The resolved preset as YAML: every key with its value, defaults and nulls included.

    It loads back (:func:`load_preset`) into an equal Preset."""
    doc = {
        "name": preset.name,
        "description": preset.description,
        **dataclasses.asdict(preset.tiling),
        "device": preset.device,
        "precision": preset.precision,
        "seed": preset.seed,
        "output": to_mapping(preset.output),
        "stages": [_stage_doc(s) for s in preset.stages],
    }
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=1000)
