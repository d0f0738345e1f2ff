"""Exhibit definitions (TOML) validated once into frozen dataclasses.

Every error names the file, the key and what was expected, so an artist editing
``doorways.toml`` at a fair sees exactly which line to fix.
"""
from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from exhibits.prompts import Prompt, PromptError, parse_prompts

BUILTIN_DIR = Path(__file__).resolve().parent
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class ConfigError(ValueError):
    """A configuration file that cannot be used. ``str()`` names file, key and the expectation."""

    def __init__(self, path: Path | str, key: str, expected: str, got: Any = None):
        self.path, self.key, self.expected, self.got = str(path), key, expected, got
        msg = f"{path}: key '{key}': expected {expected}"
        if got is not None:
            msg += f", got {got!r}"
        super().__init__(msg)


class UnknownExhibit(ConfigError):
    def __init__(self, name: str, known: list[str]):
        ValueError.__init__(self, f"unknown exhibit {name!r}; known exhibits: {', '.join(known)}")
        self.path, self.key, self.expected, self.got = "", "exhibit", f"one of {', '.join(known)}", name


@dataclass(frozen=True)
class PromptGroup:
    name: str
    sets: tuple[tuple[str, ...], ...]  # each set: 2 realms (left/right) or N across the panorama


@dataclass(frozen=True)
class Exhibit:
    name: str
    title: str
    series: str
    description: str
    generator: str
    settings: Mapping[str, Any]
    width: int
    height: int
    template: str | None = None
    style: str = ""
    overrides: Mapping[str, str] = field(default_factory=dict)
    groups: tuple[PromptGroup, ...] = ()
    fixed_prompts: tuple[Prompt, ...] = ()
    sigma: tuple[float, float] | None = None
    series_prompts: tuple[tuple[Prompt, ...], ...] = ()  # [prompts] series: one prompt set per piece, in turn
    modifiers: tuple[str, ...] = ()  # [prompts] modifiers: style phrases appended to positive prompts
    modifier_mode: str = "each"  # "each": one modifier per piece, in turn; "all": every modifier on every piece
    weight: float = 1.0
    instant: bool = True
    source: str = ""

    def realm_prompt(self, realm: str) -> str:
        """``Entrance to the {realm} realm by James Gurney`` (or the artist's override for that realm)."""
        text = self.overrides.get(realm)
        if text is None:
            text = self.template.format(realm=realm) if self.template else realm
        return f"{text} {self.style}".strip() if self.style else text

    def prompts_for(self, realms: tuple[str, ...] | list[str]) -> tuple[Prompt, ...]:
        return tuple(Prompt(self.realm_prompt(r), 1.0) for r in realms)

    def with_modifier(self, prompts: tuple[Prompt, ...], modifier: str | None) -> tuple[Prompt, ...]:
        """Append ``modifier`` (e.g. "rendered in unreal engine") to every positive prompt; negative ones stay."""
        if not modifier:
            return tuple(prompts)
        return tuple(Prompt(f"{p.text}, {modifier}", p.weight) if p.weight > 0 else p for p in prompts)

    def all_sets(self) -> list[tuple[str, tuple[str, ...]]]:
        return [(g.name, s) for g in self.groups for s in g.sets]

    def settings_dict(self) -> dict:
        return json.loads(json.dumps(_thaw(self.settings)))

    def summary(self) -> dict:
        return {
            "name": self.name, "title": self.title, "series": self.series, "generator": self.generator,
            "width": self.width, "height": self.height, "instant": self.instant,
            "sets": sum(len(g.sets) for g in self.groups), "description": self.description,
        }


def _thaw(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: _thaw(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_thaw(v) for v in obj]
    return obj


def _freeze(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in obj.items()})
    if isinstance(obj, list):
        return tuple(_freeze(v) for v in obj)
    return obj


class _Reader:
    """Typed access to one TOML table that reports the full dotted key on error."""

    def __init__(self, path: Path, data: Mapping[str, Any], prefix: str = ""):
        self.path, self.data, self.prefix = path, data, prefix

    def key(self, k: str) -> str:
        return f"{self.prefix}{k}"

    def get(self, k: str, types: type | tuple, expected: str, default: Any = ..., ) -> Any:
        if k not in self.data:
            if default is ...:
                raise ConfigError(self.path, self.key(k), f"{expected} (the key is missing)")
            return default
        v = self.data[k]
        if isinstance(v, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            raise ConfigError(self.path, self.key(k), expected, v)
        if not isinstance(v, types):
            raise ConfigError(self.path, self.key(k), expected, v)
        return v

    def text(self, k: str, default: Any = ..., nonempty: bool = True) -> str:
        v = self.get(k, str, "a text string", default)
        if isinstance(v, str) and nonempty and not v.strip():
            raise ConfigError(self.path, self.key(k), "a non-empty text string", v)
        return v

    def number(self, k: str, default: Any = ..., lo: float | None = None, hi: float | None = None) -> float:
        v = self.get(k, (int, float), "a number", default)
        if v is not None and ((lo is not None and v < lo) or (hi is not None and v > hi)):
            raise ConfigError(self.path, self.key(k), f"a number from {lo} to {hi}", v)
        return v

    def integer(self, k: str, default: Any = ..., lo: int | None = None, hi: int | None = None) -> int:
        v = self.get(k, int, "a whole number", default)
        if v is not None and ((lo is not None and v < lo) or (hi is not None and v > hi)):
            raise ConfigError(self.path, self.key(k), f"a whole number from {lo} to {hi}", v)
        return v

    def table(self, k: str, required: bool = False) -> "_Reader":
        v = self.get(k, dict, "a table", ... if required else {})
        return _Reader(self.path, v, f"{self.prefix}{k}.")

    def check_unknown(self, allowed: set[str]) -> None:
        for k in self.data:
            if k not in allowed:
                raise ConfigError(self.path, self.key(k), f"one of {', '.join(sorted(allowed))} (unknown key)")


# Generators that make a piece in one pass; every other (the CLIP-steered family) optimises, checkpoints
# and can be pre-empted by a tap.  An exhibit's ``[generator] instant`` overrides this.
INSTANT_GENERATORS = frozenset({"default", "stylegan"})

TOP_KEYS = {"title", "series", "description", "weight", "canvas", "prompts", "generator", "sigma"}


def load_exhibit(path: str | Path, *, known_generators: set[str] | None = None) -> Exhibit:
    """Read and validate one exhibit TOML. ``known_generators`` (from the renderer registry) is checked when given."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(path, "(file)", "an existing exhibit file") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(path, "(file)", "UTF-8 text", f"undecodable byte at offset {exc.start}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "(syntax)", f"valid TOML ({exc})") from None
    name = path.stem.replace("_", "-")
    if not NAME_RE.match(name):
        raise ConfigError(path, "(file name)", "a lower-case name of letters, digits, '-' or '_'", path.stem)
    r = _Reader(path, data)
    r.check_unknown(TOP_KEYS)
    title = r.text("title")
    series = r.text("series", default=title)
    description = r.text("description", default="", nonempty=False)
    weight = r.number("weight", default=1.0, lo=0.0, hi=1000.0)

    canvas = r.table("canvas")
    canvas.check_unknown({"width", "height"})
    width = canvas.integer("width", default=512, lo=16, hi=8192)
    height = canvas.integer("height", default=width, lo=16, hi=8192)

    gen = r.table("generator", required=True)
    generator = gen.text("name")
    if known_generators is not None and generator not in known_generators:
        raise ConfigError(path, "generator.name", f"one of {', '.join(sorted(known_generators))}", generator)
    instant = gen.get("instant", bool, "true or false", default=generator in INSTANT_GENERATORS)
    settings = {k: v for k, v in gen.data.items() if k not in ("name", "instant")}

    pr = r.table("prompts")
    pr.check_unknown({"template", "style", "fixed", "overrides", "group", "series", "modifiers", "modifier_mode"})
    template = pr.text("template", default=None)
    if template is not None and "{realm}" not in template:
        raise ConfigError(path, "prompts.template", "a text containing {realm}", template)
    style = pr.text("style", default="", nonempty=False)
    fixed_raw = pr.get("fixed", list, "a list of prompt strings", default=[])
    fixed = []
    for i, item in enumerate(fixed_raw):
        if not isinstance(item, str) or not item.strip():
            raise ConfigError(path, f"prompts.fixed[{i}]", "a non-empty text string", item)
        fixed.append(Prompt(item.strip(), 1.0))
    series_raw = pr.get("series", list, "a list of prompt texts ('a:1 | b:-0.5')", default=[])
    series_prompts = []
    for i, item in enumerate(series_raw):
        if not isinstance(item, str) or not item.strip():
            raise ConfigError(path, f"prompts.series[{i}]", "a non-empty prompt text", item)
        try:
            series_prompts.append(parse_prompts(item))
        except PromptError as exc:
            raise ConfigError(path, f"prompts.series[{i}]", f"a valid prompt ({exc})", item) from None
    modifiers_raw = pr.get("modifiers", list, "a list of style phrases like \"rendered in unreal engine\"", default=[])
    for i, item in enumerate(modifiers_raw):
        if not isinstance(item, str) or not item.strip() or "|" in item:
            raise ConfigError(path, f"prompts.modifiers[{i}]", "a non-empty phrase without '|'", item)
    modifier_mode = pr.text("modifier_mode", default="each")
    if modifier_mode not in ("each", "all"):
        raise ConfigError(path, "prompts.modifier_mode", "'each' (one per piece, in turn) or 'all'", modifier_mode)
    overrides_t = pr.table("overrides")
    overrides = {k: overrides_t.text(k) for k in overrides_t.data}
    groups = []
    group_list = pr.get("group", list, "an array of tables [[prompts.group]]", default=[])
    for gi, g in enumerate(group_list):
        if not isinstance(g, dict):
            raise ConfigError(path, f"prompts.group[{gi}]", "a table with name and sets", g)
        gr = _Reader(path, g, f"prompts.group[{gi}].")
        gr.check_unknown({"name", "sets"})
        gname = gr.text("name")
        sets_raw = gr.get("sets", list, "a list of realm lists like [\"Heaven\", \"Hell\"]")
        sets = []
        for si, s in enumerate(sets_raw):
            if not isinstance(s, list) or not 1 <= len(s) <= 5 or not all(isinstance(x, str) and x.strip() for x in s):
                raise ConfigError(path, f"prompts.group[{gi}].sets[{si}]", "a list of 1 to 5 realm names", s)
            sets.append(tuple(x.strip() for x in s))
        if not sets:
            raise ConfigError(path, f"prompts.group[{gi}].sets", "at least one realm set")
        groups.append(PromptGroup(gname, tuple(sets)))

    sigma = None
    if "sigma" in data:
        st = r.table("sigma")
        st.check_unknown({"min", "max"})
        lo = st.number("min", lo=0.0, hi=1000.0)
        hi = st.number("max", default=lo, lo=0.0, hi=1000.0)
        if hi < lo:
            raise ConfigError(path, "sigma.max", f"a number >= sigma.min ({lo})", hi)
        sigma = (float(lo), float(hi))

    return Exhibit(
        name=name, title=title, series=series, description=description, generator=generator,
        settings=_freeze(settings), width=width, height=height, template=template, style=style,
        overrides=MappingProxyType(overrides), groups=tuple(groups), fixed_prompts=tuple(fixed),
        sigma=sigma, weight=float(weight), instant=instant, source=str(path),
        series_prompts=tuple(series_prompts), modifiers=tuple(m.strip() for m in modifiers_raw),
        modifier_mode=modifier_mode,
    )


def exhibit_paths(extra_dirs: list[Path] | tuple[Path, ...] = ()) -> dict[str, Path]:
    """Exhibit name -> TOML path; the artist's own directories override the built-in ones."""
    found: dict[str, Path] = {}
    for d in (BUILTIN_DIR, *extra_dirs):
        for p in sorted(Path(d).glob("*.toml")):
            found[p.stem.replace("_", "-")] = p
    return found


def load_exhibits(names: list[str] | tuple[str, ...] | None = None, extra_dirs: list[Path] | tuple[Path, ...] = (),
                  known_generators: set[str] | None = None) -> dict[str, Exhibit]:
    """Load the named exhibits (all found when ``names`` is None). Unknown names raise ConfigError."""
    paths = exhibit_paths(extra_dirs)
    if names is None:
        names = sorted(paths)
    out = {}
    for n in names:
        key = n.replace("_", "-")
        if key not in paths:
            raise UnknownExhibit(n, sorted(paths))
        out[key] = load_exhibit(paths[key], known_generators=known_generators)
    return out
