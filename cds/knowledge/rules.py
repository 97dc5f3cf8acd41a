"""Clinical knowledge loaded from rules/ once at start-up: ``load_rules(config)``.

Each file is read by its own module (citations, vitamin_d, bone, sarcopenia, card_text,
terminology) straight into frozen dataclasses; this module checks the files against each
other and against the code's vocabulary (cds.knowledge.vocabulary) in both directions, picks
the configured guideline profiles and returns one immutable ``Rules``. Any problem stops
start-up with a RulesError naming the file, the field and the name. Nothing here knows a
threshold or a code: those are in the YAML.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, TypeVar

from cds.config import Config
from cds.knowledge import bone as bone_file
from cds.knowledge import card_text
from cds.knowledge import citations as citations_file
from cds.knowledge import fracture as fracture_file
from cds.knowledge import sarcopenia as sarcopenia_file
from cds.knowledge import vitamin_d as vitamin_d_file
from cds.knowledge.bone import BoneRules
from cds.knowledge.card_text import CardRules, CardText
from cds.knowledge.citations import Citation
from cds.knowledge.fracture import FractureRules
from cds.knowledge.loader import RulesError, UnknownProfileError, load_file
from cds.knowledge.medication_risk import MedicationRiskRules, load_medication_risk
from cds.knowledge.orders import OrderRules, load_orders
from cds.knowledge.sarcopenia import SarcopeniaRules
from cds.knowledge.terminology import Terminology, load_terminology
from cds.knowledge.vitamin_d import VitaminDRules

FILES = {"citations": citations_file.FILE, "vitamin_d": vitamin_d_file.FILE, "bone": bone_file.FILE,
         "sarcopenia": sarcopenia_file.FILE, "cards": card_text.FILE, "fracture": fracture_file.FILE}
_P = TypeVar("_P")


@dataclass(frozen=True)
class Rules:
    source_dir: Path
    citations: Mapping[str, Citation]
    vitamin_d: VitaminDRules
    bone: BoneRules
    sarcopenia: SarcopeniaRules
    cards: CardRules
    terminology: Terminology
    orders: OrderRules
    fracture: FractureRules
    medication_risk: MedicationRiskRules

    def prefetch_templates(self) -> dict[str, str]:
        return dict(self.terminology.prefetch_templates())

    def service_text(self, service_id: str | None = None) -> dict[str, str]:
        """Title and description of a CDS service (rules/cards.yaml ``services.<id>``, else
        ``service:``)."""
        return dict(self.cards.services.get(service_id or "", self.cards.service))

    def orderable(self, name: str) -> dict[str, str] | None:
        try:
            return dict(self.terminology.orderable(name))
        except (KeyError, LookupError):
            return None

    def card(self, finding: str) -> CardText:
        return self.cards.findings[finding]

    def suggestions_for(self, finding: str, flags: set[str] | frozenset[str]) -> tuple[str, ...]:
        """Suggestion ids of ``finding``'s card whose flag conditions hold."""
        return tuple(ref.id for ref in self.cards.findings[finding].suggestions if ref.applies(flags))


def load_rules(config: Config, *, terminology: Terminology | None = None) -> Rules:
    """Load, validate and cross-check every rules file; pick the configured profiles."""
    rules_dir = Path(config.rules_dir)
    paths = {key: rules_dir / name for key, name in FILES.items()}
    if terminology is None:
        terminology = load_terminology(rules_dir)

    citations: Mapping[str, Citation] = load_file(paths["citations"], citations_file.CitationsFileSchema())
    vd_profiles = load_file(paths["vitamin_d"], vitamin_d_file.VitaminDFileSchema())
    sarc_profiles = load_file(paths["sarcopenia"], sarcopenia_file.SarcopeniaFileSchema())
    bone: BoneRules = load_file(paths["bone"], bone_file.BoneFileSchema())
    cards: CardRules = load_file(paths["cards"], card_text.CardsFileSchema())
    fracture: FractureRules = load_file(paths["fracture"], fracture_file.FractureFileSchema())
    _need_citations(paths["fracture"], fracture.citation_refs(), citations)

    for vd in vd_profiles.values():
        _need_citations(paths["vitamin_d"], vd.citation_refs(), citations)
    _need_citations(paths["bone"], bone.citation_refs(), citations)
    for sarc in sarc_profiles.values():
        _need_citations(paths["sarcopenia"], sarc.citation_refs(), citations)
    vitamin_d = _select(paths["vitamin_d"], vd_profiles, config.vitamin_d_profile,
                        "MSKCDS_VITAMIN_D_PROFILE")
    vitamin_d = vitamin_d_file.complete_stated_equivalents(paths["vitamin_d"], vitamin_d, terminology)
    sarcopenia = _select(paths["sarcopenia"], sarc_profiles, config.sarcopenia_profile,
                         "MSKCDS_SARCOPENIA_PROFILE")
    cards = card_text.check_cards(paths["cards"], cards, citations, terminology.orderable)
    orders = load_orders(rules_dir, citations, terminology)
    medication_risk = load_medication_risk(rules_dir, orders)
    _need_citations(rules_dir / "medication_risk.yaml", medication_risk.citation_refs(), citations)
    rules = Rules(source_dir=rules_dir, citations=citations, vitamin_d=vitamin_d, bone=bone,
                  sarcopenia=sarcopenia, cards=cards, terminology=terminology, orders=orders,
                  fracture=fracture, medication_risk=medication_risk)
    _check_categories(paths, rules)
    return rules


def _need_citations(path: Path, refs: Iterable[tuple[str, str]],
                    citations: Mapping[str, Citation]) -> None:
    for where, cid in refs:
        if cid not in citations:
            raise RulesError(path, f"{where}: unknown citation {cid!r} (not in citations.yaml)")


def _select(path: Path, profiles: Mapping[str, _P], name: str, setting: str) -> _P:
    if name not in profiles:
        raise UnknownProfileError(path, f"profiles: no profile {name!r} (set by {setting}); "
                                        f"defined: {', '.join(sorted(profiles))}")
    return profiles[name]


def _check_categories(paths: Mapping[str, Path], rules: Rules) -> None:
    """Condition/medication categories the rules name must exist in the value sets."""
    term = rules.terminology
    known_conditions = _category_names(term.condition_codes, ())
    known_meds = _category_names(term.medication_codes, term.medication_keywords)
    checks = [(paths["vitamin_d"], "kidney_failure.conditions", c, known_conditions)
              for c in rules.vitamin_d.kidney_conditions + rules.vitamin_d.ckd_conditions]
    checks += [(paths["bone"], "screening.suppress_conditions", c, known_conditions)
               for c in rules.bone.suppress_conditions]
    checks += [(paths["bone"], "fracture_conditions", c, known_conditions)
               for c in rules.bone.fracture_conditions]
    checks += [(paths["bone"], "postmenopausal_conditions", c, known_conditions)
               for c in rules.bone.postmenopausal_conditions]
    checks += [(paths["bone"], "dxa_reports", c, _category_names(term.report_codes, ()))
               for c in rules.bone.dxa_reports]
    checks += [(paths["cards"], f"findings.{f}.problem_category", card.problem_category,
                known_conditions)
               for f, card in rules.cards.findings.items() if card.problem_category]
    checks += [(paths["vitamin_d"], "supplement_medications", m, known_meds)
               for m in rules.vitamin_d.supplement_medications]
    checks += [(paths["bone"], "screening.suppress_medications", m, known_meds)
               for m in rules.bone.suppress_medications]
    fr = rules.fracture
    checks += [(paths["fracture"], where, c, known_conditions) for where, names in (
        ("fracture_conditions", fr.fracture_conditions), ("sites", tuple(fr.sites)),
        ("kidney.conditions", fr.kidney_conditions)) for c in names]
    checks += [(paths["fracture"], "treatment_gap.therapy_medications", m, known_meds)
               for m in fr.therapy_medications]
    if rules.vitamin_d.bone_target is not None:
        checks += [(paths["vitamin_d"], "bone_target.conditions", c, known_conditions)
                   for c in rules.vitamin_d.bone_target.conditions]
        checks += [(paths["vitamin_d"], "bone_target.medications", m, known_meds)
                   for m in rules.vitamin_d.bone_target.medications]
    for path, where, name, known in checks:
        if name not in known:
            raise RulesError(path, f"{where}: category {name!r} is not in valuesets.yaml "
                                   f"(known: {', '.join(sorted(known))})")


def _category_names(codes: Mapping[str, tuple[object, ...]],
                    keywords: Iterable[tuple[str, str]]) -> set[str]:
    """Category names the value sets define (codes and text keywords)."""
    names = {getattr(c, "category") for cats in codes.values() for c in cats}
    return names | {category for _keyword, category in keywords}
