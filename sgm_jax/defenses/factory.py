"""Defenses by name, with their options, as the command line and configuration specs ("sgm+safecode") name them."""

from __future__ import annotations

import dataclasses

from sgm_jax.defenses.base import Defense
from sgm_jax.defenses.daco import DACO, MOP
from sgm_jax.defenses.ecso import ECSO
from sgm_jax.defenses.prober import ProberGate, load_prober
from sgm_jax.defenses.safecode import SafeCoDe
from sgm_jax.defenses.shields import ADASHIELD_PROMPT, SAFETY_SYSTEM_PROMPT, AdaShieldS, SystemPromptShield
from sgm_jax.defenses.verdicts import EndpointVerdicts, FixedVerdicts, ProbeVerdicts, SelfVerdicts, VerdictSource
from sgm_jax.runtime.choices import DEFENSES, VERDICTS
from sgm_jax.runtime.errors import OptionError
from sgm_jax.steering.annotate import load_annotation
from sgm_jax.steering.dictionary import load_dictionary
from sgm_jax.steering.sae import load_sae
from sgm_jax.steering.sparse_coding import SparseCodingSettings


@dataclasses.dataclass
class DefenseOptions:
    """Every defense's settings in one place (the command line's `--safecode-*`, `--shield-*`, ... options)."""

    prober: str | None = None  # a prober file: SafeCoDe's default verdicts and the prober gate
    verdicts: str | None = None  # SafeCoDe's verdict source; default probe with a prober, else self
    safecode: dict = dataclasses.field(default_factory=dict)  # SafeCoDe fields (alpha, max_steps, ...)
    shield_text: str = SAFETY_SYSTEM_PROMPT
    adashield_text: str = ADASHIELD_PROMPT
    adashield_position: str = "after"
    ecso_check_tokens: int = 4
    ecso_caption_tokens: int = 32
    dictionary: str | None = None  # MOP's concept dictionary file
    mop: dict = dataclasses.field(default_factory=dict)  # SparseCodingSettings fields (lam, tau, ...)
    sae: str | None = None  # DACO's SAE file
    annotation: str | None = None  # DACO's annotation file
    daco_gamma: float = 0.0
    daco_eta: float | None = None  # relabel the annotation at this threshold
    _loaded: dict = dataclasses.field(default_factory=dict, repr=False)

    def loaded_prober(self):
        if self.prober is None:
            return None
        if "prober" not in self._loaded:
            self._loaded["prober"] = load_prober(self.prober)
        return self._loaded["prober"]

    def verdict_source(self) -> VerdictSource:
        source = self.verdicts or ("probe" if self.prober else "self")
        if source not in VERDICTS:
            raise OptionError(f"unknown SafeCoDe verdict source {source!r}; known: {', '.join(VERDICTS)}")
        if source == "probe":
            if self.prober is None:
                raise OptionError("SafeCoDe verdicts from a probe need --prober FILE (made by `sgm-jax prober`)")
            return ProbeVerdicts(self.loaded_prober())
        if source == "endpoint":
            return EndpointVerdicts()
        if source == "self":
            return SelfVerdicts()
        return FixedVerdicts(source == "unsafe")


def make_defense(name: str, options: DefenseOptions) -> Defense:
    if name == "safecode":
        return SafeCoDe(options.verdict_source(), **options.safecode)
    if name == "shield":
        return SystemPromptShield(options.shield_text)
    if name == "adashield":
        return AdaShieldS(options.adashield_text, options.adashield_position)
    if name == "ecso":
        return ECSO(options.ecso_check_tokens, options.ecso_caption_tokens)
    if name == "mop":
        if options.dictionary is None:
            raise OptionError("MOP needs --dictionary FILE (made by `sgm-jax dictionary`)")
        return MOP(load_dictionary(options.dictionary), SparseCodingSettings(**options.mop))
    if name == "daco":
        if options.sae is None or options.annotation is None:
            raise OptionError(
                "DACO needs --sae FILE and --annotation FILE (made by `sgm-jax sae train` and `sgm-jax sae annotate`)"
            )
        sae = load_sae(options.sae)
        annotation = load_annotation(options.annotation, sae=sae)
        if options.daco_eta is not None:
            annotation = annotation.with_eta(options.daco_eta)
        return DACO(sae, annotation, gamma=options.daco_gamma)
    if name == "prober-gate":
        if options.prober is None:
            raise OptionError("the prober gate needs --prober FILE (made by `sgm-jax prober`)")
        return ProberGate(options.loaded_prober())
    raise OptionError(f"unknown defense {name!r}; known: {', '.join(DEFENSES)}")


def make_defenses(names, options: DefenseOptions) -> list[Defense]:
    return [make_defense(name, options) for name in names or ()]
