"""Sweep settings: a method (AurA, Damp, Det0), its knobs, and the group of sites it acts on, as a grid or a list.

A setting turns expert scores into an intervention restricted to its site group. Site groups are named sets of
the scored sites: `all`, `sgm` (the paper's sites: the MLP gate/up/down projections of every decoder layer),
`gate`, `up`, `down`, `down:in` (one MLP projection across the decoder), `layers:A-B` (decoder layers A to B),
`vision` (the vision tower), `projector` (the image projector, or Qwen's merger), or your own
`NAME=PATTERN[,PATTERN...]` of site globs.
"""

from __future__ import annotations

import csv
import dataclasses
import fnmatch
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from sgm_jax.data.samples import DatasetError
from sgm_jax.interventions import Intervention, aura, damp, det0
from sgm_jax.responses.sites import site_refs
from sgm_jax.runtime.errors import MissingFileError, OptionError

METHODS = ("aura", "damp", "det0")
_MLP = {"gate": ".mlp.gate_proj", "up": ".mlp.up_proj", "down": ".mlp.down_proj", "down:in": ".mlp.down_proj:in"}
_LAYERS = re.compile(r"layers:(\d+)-(\d+)$")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One point of a sweep. `threshold` is AurA's, `k` the top-k of Damp and Det0, `alpha` Damp's fixed gate;
    `strength` scales the result (`alpha -> 1 - s (1 - alpha)`); `sites` names the site group."""

    method: str
    sites: str = "sgm"
    threshold: float | None = None
    k: int | None = None
    alpha: float | None = None
    strength: float = 1.0

    def __post_init__(self):
        for name, kind in (("threshold", float), ("k", int), ("alpha", float), ("strength", float)):
            value = getattr(self, name)
            if value is not None:  # one spelling per value, so keys match however a number was written
                object.__setattr__(self, name, kind(value))
        if self.method not in METHODS:
            raise OptionError(f"sweep method {self.method!r} is not one of {list(METHODS)}")
        needs = {"aura": ("threshold",), "damp": ("k", "alpha"), "det0": ("k",)}[self.method]
        missing = [name for name in needs if getattr(self, name) is None]
        extra = [name for name in ("threshold", "k", "alpha") if name not in needs and getattr(self, name) is not None]
        if missing or extra:
            raise OptionError(f"a {self.method} setting takes {list(needs)}: {self} lacks {missing} or has {extra}")
        if self.strength < 0 or (self.k is not None and self.k < 0) or (self.alpha is not None and self.alpha < 0):
            raise OptionError(f"setting {self}: strength, k and alpha must be >= 0")

    @property
    def key(self) -> str:
        """A stable name: what a resumed sweep recognises the setting by."""
        knobs = [f"{n}={getattr(self, n)}" for n in ("threshold", "k", "alpha") if getattr(self, n) is not None]
        return " ".join([self.method, *knobs, f"strength={self.strength}", f"sites={self.sites}"])

    def row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def grid(
    methods: Sequence[str],
    *,
    sites: Sequence[str] = ("sgm",),
    thresholds: Sequence[float] = (0.5,),
    strengths: Sequence[float] = (1.0,),
    ks: Sequence[int] = (100,),
    alphas: Sequence[float] = (0.5,),
) -> list[Setting]:
    """Every combination each method takes: AurA over thresholds x strengths, Damp over k x alpha x strengths,
    Det0 over k (switching neurons off has no strength), each on every site group; duplicates dropped."""
    settings: list[Setting] = []
    for method in methods:
        for group in sites:
            if method == "aura":
                settings += [Setting("aura", group, threshold=t, strength=s) for t in thresholds for s in strengths]
            elif method == "damp":
                settings += [
                    Setting("damp", group, k=k, alpha=a, strength=s) for k in ks for a in alphas for s in strengths
                ]
            elif method == "det0":
                settings += [Setting("det0", group, k=k) for k in ks]
            else:
                Setting(method)  # the error names the known methods
    return list(dict.fromkeys(settings))


def read_settings(path: str) -> list[Setting]:
    """A list file of settings: JSONL (one object per line) or CSV with a header, fields as `Setting`'s."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
    except FileNotFoundError:
        raise MissingFileError(f"settings file {path} does not exist") from None
    if path.endswith(".csv"):
        rows = [(i + 2, row) for i, row in enumerate(csv.DictReader(text.splitlines()))]
    else:
        rows = []
        for line, raw in enumerate(text.splitlines(), start=1):
            if raw.strip():
                try:
                    rows.append((line, json.loads(raw)))
                except json.JSONDecodeError as err:
                    raise DatasetError(f"{path}, line {line}: not JSON ({err.msg})") from None
    settings = []
    for line, row in rows:
        try:
            settings.append(_setting(row))
        except (OptionError, TypeError, ValueError) as err:
            raise DatasetError(f"{path}, line {line}: {err}") from None
    if not settings:
        raise DatasetError(f"{path} holds no settings")
    return list(dict.fromkeys(settings))


def _setting(row: Any) -> Setting:
    if not isinstance(row, dict):
        raise ValueError(f"a setting is an object of {[f.name for f in dataclasses.fields(Setting)]}")
    unknown = sorted(set(row) - {f.name for f in dataclasses.fields(Setting)})
    if unknown:
        raise ValueError(f"unknown fields {unknown}")
    value = lambda name, kind: None if row.get(name) in (None, "") else kind(row[name])
    return Setting(
        method=str(row.get("method", "")),
        sites=str(row.get("sites") or "sgm"),
        threshold=value("threshold", float),
        k=value("k", int),
        alpha=value("alpha", float),
        strength=1.0 if row.get("strength") in (None, "") else float(row["strength"]),
    )


def site_groups(model, scored: Iterable[str], names: Iterable[str]) -> dict[str, list[str]]:
    """Each named group's scored sites, in the model's site order; a group with none is an error naming it."""
    refs = site_refs(model)
    scored = [s for s in refs if s in set(scored)]
    layers = model.decoder_layers + "."
    groups = {}
    for spec in names:
        name, sites = _group(spec, scored, refs, layers)
        if not sites:
            raise OptionError(f"site group {spec!r} holds none of the {len(scored)} scored sites")
        if name in groups and groups[name] != sites:
            raise OptionError(f"site group {name!r} is defined twice")
        groups[name] = sites
    return groups


def group_name(spec: str) -> str:
    """The name a group spec goes by (`NAME=PATTERNS` is NAME; a builtin is itself)."""
    return spec.split("=", 1)[0]


def _group(spec: str, scored: list[str], refs, layers: str) -> tuple[str, list[str]]:
    decoder = [s for s in scored if s.startswith(layers)]
    if "=" in spec:
        name, patterns = spec.split("=", 1)
        globs = [p for p in patterns.split(",") if p]
        return name, [s for s in scored if any(fnmatch.fnmatchcase(s, g) for g in globs)]
    if spec == "all":
        return spec, scored
    if spec == "sgm":
        return spec, [s for s in decoder if s.endswith(tuple(_MLP[p] for p in ("gate", "up", "down")))]
    if spec in _MLP:
        return spec, [s for s in decoder if s.endswith(_MLP[spec])]
    if match := _LAYERS.match(spec):
        low, high = int(match[1]), int(match[2])
        return spec, [s for s in decoder if low <= int(s[len(layers) :].split(".")[0]) <= high]
    if spec in ("vision", "projector"):
        projector = [s for s in scored if refs[s].image_domain and ("projector" in s or "merger" in s)]
        vision = [s for s in scored if refs[s].image_domain and s not in projector]
        return spec, vision if spec == "vision" else projector
    raise OptionError(
        f"site group {spec!r} is not all, sgm, gate, up, down, down:in, layers:A-B, vision, projector or "
        "NAME=PATTERN[,PATTERN...]"
    )


def intervention_for(
    setting: Setting, scores: Mapping[str, np.ndarray], groups: Mapping[str, list[str]], source: dict | None = None
) -> Intervention:
    """The setting's intervention: its method on the scores of its group's sites, at its strength."""
    if setting.sites not in groups:
        raise OptionError(f"setting {setting.key!r} names site group {setting.sites!r}, not one of {list(groups)}")
    chosen = {s: scores[s] for s in groups[setting.sites]}
    if setting.method == "aura":
        iv = aura(chosen, threshold=setting.threshold, source=source)
    elif setting.method == "damp":
        iv = damp(chosen, min(setting.k, sum(len(v) for v in chosen.values())), setting.alpha, source=source)
    else:
        iv = det0(chosen, min(setting.k, sum(len(v) for v in chosen.values())), source=source)
    return iv.with_strength(setting.strength) if setting.strength != 1.0 else iv
