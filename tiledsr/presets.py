"""Presets: YAML (``yaml.safe_load`` only) validated strictly into frozen configs before any model loads."""
from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Sequence

import yaml

from .config import closest, from_mapping, to_mapping
from .errors import PresetError
from .stages import StageTiling, Tiling, stage_class

__all__ = ["Preset", "StageSpec", "load_preset", "preset_names", "preset_to_yaml"]

PRESET_DIR = Path(__file__).parent / "presets"
DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


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
            return f"device: expected auto, cpu, cuda, cuda:N or mps, got {self.device!r}"
        if self.seed is not None and self.seed < 0:
            return f"seed must be >= 0, got {self.seed}"
        return Tiling.check(self)


@dataclass(frozen=True)
class StageSpec:
    """One validated stage: its ``type``, frozen ``config`` and resolved ``tiling``."""

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


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def read_preset(name_or_path: str | Path) -> tuple[dict, str]:
    """Parse a bundled preset name or a YAML file into a raw mapping; returns ``(raw, where)``."""
    s = str(name_or_path)
    if s.endswith((".yaml", ".yml")) or "/" in s or Path(s).is_file():
        path, where = Path(s), f"preset {s!r}"
        if not path.is_file():
            raise PresetError(f"{where}: file not found (or not a file); check the path")
    else:
        path, where = PRESET_DIR / f"{s}.yaml", f"preset {s!r}"
        if not path.is_file():
            raise PresetError(
                f"unknown preset {s!r}{closest(s, preset_names())}; bundled presets: {', '.join(preset_names())}"
            )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise PresetError(f"{where}: not valid YAML: {_one_line(exc)}") from exc
    except OSError as exc:
        raise PresetError(f"{where}: cannot read: {exc.strerror}") from exc
    if not isinstance(raw, dict):
        raise PresetError(f"{where}: expected a mapping with a 'stages' list, got {type(raw).__name__}")
    raw.setdefault("name", path.stem)
    return raw, where


def apply_overrides(raw: dict, top: Mapping[str, Any] = {}, sets: Sequence[str] = ()) -> dict:
    """Return a copy of ``raw`` with top-level ``top`` values and ``--set`` items applied.

    Tiling keys given in ``top`` win over per-stage values. ``sets`` items look like
    ``key=value``, ``TYPE.key=value`` (every stage of that type) or ``N.key=value``
    (stage N, from 0); values are parsed as YAML scalars.
    """
    raw = copy.deepcopy(raw)
    stages = raw.get("stages") if isinstance(raw.get("stages"), list) else []
    for key, value in top.items():
        raw[key] = value
        for st in stages:
            if key in {f.name for f in dataclasses.fields(Tiling)} and isinstance(st, dict):
                st.pop(key, None)
    for item in sets:
        target, sep, text = item.partition("=")
        if not sep or not target:
            raise PresetError(f"--set {item!r}: expected KEY=VALUE or STAGE.KEY=VALUE")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PresetError(f"--set {item!r}: value is not valid YAML") from exc
        sel, _, key = target.rpartition(".")
        if not sel:
            raw[key] = value
            continue
        chosen = [st for i, st in enumerate(stages) if isinstance(st, dict) and sel in (str(i), st.get("type"))]
        if not chosen:
            raise PresetError(f"--set {item!r}: no stage {sel!r} in this preset (use a stage type or index)")
        for st in chosen:
            st[key] = value
    return raw


def validate(raw: dict, where: str) -> Preset:
    """Raw mapping -> Preset, or PresetError naming the key path."""
    top = from_mapping(_TopLevel, raw, where)
    tiling = Tiling(top.tile, top.overlap, top.blend, top.batch)
    output = from_mapping(OutputSettings, top.output, f"{where}: output")
    if not isinstance(top.stages, list) or not top.stages:
        raise PresetError(f"{where}: 'stages' must be a non-empty list of stages, each with a 'type'")
    specs = []
    for i, st in enumerate(top.stages):
        at = f"{where}: stages[{i}]"
        if not isinstance(st, dict) or not isinstance(st.get("type"), str):
            raise PresetError(f"{at}: expected a mapping with a 'type' (a stage type name)")
        options = {k: v for k, v in st.items() if k != "type"}
        cls = stage_class(st["type"], at)
        config = from_mapping(cls.Config, options, f"{at} ({st['type']})")
        stage_tiling = config.resolve(tiling) if isinstance(config, StageTiling) else tiling
        problem = stage_tiling.check()
        if problem:
            raise PresetError(f"{at} ({st['type']}): {problem}")
        specs.append(StageSpec(st["type"], config, stage_tiling))
    return Preset(top.name or "custom", top.description, tuple(specs), tiling, top.device, top.precision,
                  top.seed, output)


def load_preset(name_or_path: str | Path, top: Mapping[str, Any] = {}, sets: Sequence[str] = ()) -> Preset:
    """Read, override and validate a preset (bundled name or YAML path). No model is loaded."""
    raw, where = read_preset(name_or_path)
    return validate(apply_overrides(raw, top, sets), where)


def preset_to_yaml(preset: Preset) -> str:
    """The resolved preset (every default filled in) as YAML."""
    tiling_keys = {f.name for f in dataclasses.fields(Tiling)}

    def clean(d: dict) -> dict:
        return {k: v for k, v in d.items() if v is not None and k not in tiling_keys}

    doc = {
        "name": preset.name,
        "description": preset.description,
        **dataclasses.asdict(preset.tiling),
        "device": preset.device,
        "precision": preset.precision,
        "seed": preset.seed,
        "output": clean(to_mapping(preset.output)),
        "stages": [{"type": s.type, **clean(to_mapping(s.config)),
                    **(dataclasses.asdict(s.tiling) if isinstance(s.config, StageTiling) else {})}
                   for s in preset.stages],
    }
    return yaml.safe_dump(doc, sort_keys=False)
