"""The contract between the code and rules/: the engine's vocabulary (cds/knowledge/vocabulary.py)
is checked against the YAML in both directions at start-up, and every card template is checked
against its finding's typed variables. A clinician-informaticist editing YAML gets a start-up
error naming the file, the field and the name, never a silently different card."""
from __future__ import annotations

import ast
from datetime import date
from pathlib import Path

import pytest

from cds.cards.builder import build_cards, check_templates
from cds.clinical.evaluate import evaluate
from cds.clinical.findings import FINDING_VARIABLES, variable_names
from cds.config import Config
from cds.engine import Engine
from cds.fhir.normalize import normalize
from cds.knowledge.loader import RulesError
from cds.knowledge.rules import load_rules
from cds.knowledge.vocabulary import FINDINGS, KINDS, RECOGNISED_ONLY, Kind
from rules_support import copy_all_rules, edit_yaml

REPO = Path(__file__).resolve().parents[3]
RULES = REPO / "rules"
EXAMPLES = REPO / "fhir_examples"
CLINICAL = REPO / "cds" / "clinical"


@pytest.fixture()
def rules_copy(tmp_path: Path) -> Path:
    return copy_all_rules(tmp_path)


edit = edit_yaml


def rename_everywhere(rules_dir: Path, old: str, new: str) -> None:
    """What an editor renaming a kind in every rules file would do (text replace)."""
    for path in rules_dir.glob("*.yaml"):
        path.write_text(path.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")


def example_codes(rules, name: str) -> list[str]:
    import json

    request = json.loads((EXAMPLES / f"{name}.request.json").read_text(encoding="utf-8"))
    resources = [request["prefetch"]["patient"]]
    for key, value in request["prefetch"].items():
        if key != "patient" and value:
            resources += [e["resource"] for e in value.get("entry", [])]
    facts = normalize(resources, request["context"]["patientId"], rules, as_of=date(2026, 11, 22))
    return [f.code for f in evaluate(facts, rules)]


# ----------------------------------------------------------------------------- kinds
def test_renamed_kind_stops_start_up_naming_it(rules_copy):
    # the rename the issue describes: without the check it loads and the sarcopenia-confirmed
    # example silently becomes a low-muscle-mass card
    assert example_codes(load_rules(Config(rules_dir=RULES)), "sarcopenia-confirmed") == [
        "sarcopenia-confirmed"]
    rename_everywhere(rules_copy, "grip-strength", "handgrip-strength")
    for start in (lambda: load_rules(Config(rules_dir=rules_copy)),
                  lambda: Engine(Config(rules_dir=rules_copy))):
        with pytest.raises(RulesError) as err:
            start()
        message = str(err.value)
        assert "valuesets.yaml" in message
        assert "observations: no kind 'grip-strength'" in message, message
        assert "observations.handgrip-strength: kind 'handgrip-strength' is defined but nothing " \
               "reads it" in message, message


def test_kind_renamed_in_the_value_sets_only_names_it(rules_copy):
    edit(rules_copy / "valuesets.yaml", lambda d: d["observations"].update(
        {"gait": d["observations"].pop("gait-speed")}))
    with pytest.raises(RulesError) as err:
        load_rules(Config(rules_dir=rules_copy))
    assert "valuesets.yaml" in str(err.value) and "'gait-speed'" in str(err.value)
    assert "observations.gait:" in str(err.value)


def test_kind_nothing_reads_stops_start_up(rules_copy):
    # a new kind added to every file the terminology needs, but no code reads it yet
    edit(rules_copy / "valuesets.yaml", lambda d: d["observations"].update({"urine-calcium": {
        "title": "Urine calcium", "codes": [{"system": "mskcds", "code": "calcium-test",
                                             "display": "test", "source": "test"}]}}))
    edit(rules_copy / "units.yaml", lambda d: d["kinds"].update({"urine-calcium": {
        "canonical": "mg/dL", "accept": [{"code": "mg/dL", "multiply": 1, "cite": "ucum"}]}}))
    edit(rules_copy / "data_quality.yaml", lambda d: d["plausible"].update({"urine-calcium": {
        "low": 1, "high": 30, "why": "test bounds for a kind nothing reads"}}))
    with pytest.raises(RulesError) as err:
        load_rules(Config(rules_dir=rules_copy))
    assert "valuesets.yaml: observations.urine-calcium: kind 'urine-calcium' is defined but " \
           "nothing reads it" in str(err.value)


@pytest.mark.parametrize("file,change,words", [
    ("cards.yaml", lambda d: d["kinds"].pop("bmi"), ["cards.yaml", "kinds", "no label for: bmi"]),
    ("cards.yaml", lambda d: d["kinds"].update({"bmi-z": "BMI z"}), ["cards.yaml", "kinds.bmi-z"]),
    ("cards.yaml", lambda d: d["sites"].pop("radius"), ["cards.yaml", "sites", "radius"]),
    ("cards.yaml", lambda d: d["measures"].pop("alm-bmi"), ["cards.yaml", "measures", "alm-bmi"]),
    ("cards.yaml", lambda d: d["labels"]["criteria"].update({"weight": "Weight"}),
     ["cards.yaml", "labels.criteria.weight"]),
    ("vitamin_d.yaml", lambda d: d.update(kind="vitamin-d"), ["vitamin_d.yaml", "kind"]),
    ("bone.yaml", lambda d: d["screening"]["dxa_kinds"].append("dxa"),
     ["bone.yaml", "screening.dxa_kinds[3]"]),
])
def test_every_file_that_names_a_vocabulary_word_is_checked(rules_copy, file, change, words):
    edit(rules_copy / file, change)
    with pytest.raises(RulesError) as err:
        load_rules(Config(rules_dir=rules_copy))
    for word in words:
        assert word in str(err.value), str(err.value)


def test_every_kind_is_read_by_the_clinical_code():
    """The other direction on the code side: each Kind is read in cds/clinical (or named by a
    rules file the clinical code reads), so 'the code reads it' in the start-up error is true."""
    used: set[str] = set()
    for path in CLINICAL.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id == "Kind":
                used.add(Kind[node.attr].value)
    rules = load_rules(Config())
    named_by_rules = {rules.vitamin_d.kind, *rules.bone.screening_kinds,
                      *(k.kind for k in rules.orders.kidney), *rules.orders.dxa.kinds,
                      *(kind for kind, _ in rules.orders.dxa.risk_observations)}
    assert set(KINDS) == used | named_by_rules | set(RECOGNISED_ONLY)
    assert not (used | named_by_rules) & set(RECOGNISED_ONLY), "read after all: drop it there"


# ----------------------------------------------------------------------------- typed findings
def test_every_finding_has_a_variables_dataclass():
    assert set(FINDING_VARIABLES) == set(FINDINGS)


@pytest.mark.parametrize("finding,field,text", [
    ("osteoporosis", "detail", "Grip {grip}"),                 # a sarcopenia variable
    ("vitamin-d-deficiency", "summary_by_grade", {"severe": "Severe: {value} {units}"}),
    ("sarcopenia-probable", "short", "probable sarcopenia ({mass})?? {speed}"),
])
def test_placeholder_no_finding_provides_stops_start_up(rules_copy, finding, field, text):
    edit(rules_copy / "cards.yaml", lambda d: d["findings"][finding].update({field: text}))
    with pytest.raises(RulesError) as err:
        Engine(Config(rules_dir=rules_copy))
    message = str(err.value)
    assert "cards.yaml" in message and f"findings.{finding}.{field}" in message, message
    assert "unknown template variable" in message


def test_placeholder_of_the_findings_own_variables_is_accepted(rules_copy):
    # {age} is a BoneVariables field: osteoporosis may use it; the card shows it
    edit(rules_copy / "cards.yaml", lambda d: d["findings"]["osteoporosis"].update(
        summary="Osteoporosis at {age}: T-score {value} ({site}, {date})"))
    rules = load_rules(Config(rules_dir=rules_copy))
    check_templates(rules)
    import json

    request = json.loads((EXAMPLES / "osteoporosis.request.json").read_text(encoding="utf-8"))
    resources = [request["prefetch"]["patient"]] + [
        e["resource"] for k, v in request["prefetch"].items() if k != "patient" and v
        for e in v.get("entry", [])]
    facts = normalize(resources, request["context"]["patientId"], rules, as_of=date(2026, 11, 22))
    (card,) = build_cards(evaluate(facts, rules), facts, rules)
    assert card["summary"].startswith("Osteoporosis at 72: T-score -2.7 (total hip, ")


def test_the_shipped_templates_use_only_their_findings_variables():
    rules = load_rules(Config())
    check_templates(rules)   # does not raise
    for code in FINDINGS:
        assert variable_names(code), code
