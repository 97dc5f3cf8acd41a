"""Loading rules/: knowledge is data. A malformed or inconsistent file (a tmp copy of the real
one, broken on purpose) stops start-up with a RulesError naming the file and the field; changing
one threshold in a tmp copy flips an outcome; profiles are picked by configuration."""
from __future__ import annotations

import subprocess
import sys
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from cds.config import Config, ConfigError
from cds.clinical.evaluate import evaluate
from cds.clinical.facts import Measurement, PatientFacts
from cds.knowledge.loader import RulesError
from cds.knowledge.rules import load_rules
from rules_support import copy_all_rules, edit_yaml

REPO = Path(__file__).resolve().parents[3]
RULES = REPO / "rules"
AS_OF = date(2026, 11, 22)


@pytest.fixture()
def rules_copy(tmp_path: Path) -> Path:
    return copy_all_rules(tmp_path)


edit = edit_yaml


def load(rules_dir: Path, **kw):
    """What the engine checks at start-up: the rules files, then the card text against the
    findings' typed variables (cds.cards.builder.check_templates)."""
    from cds.cards.builder import check_templates

    rules = load_rules(Config(rules_dir=rules_dir, **kw))
    check_templates(rules)
    return rules


def vitamin_d_facts(value: float) -> PatientFacts:
    when = datetime.combine(AS_OF - timedelta(days=5), datetime.min.time(), timezone.utc)
    meas = Measurement(kind="vitamin-d-25oh", value=value, unit="ng/mL", when=when, code="t|t",
                       display="t", original_value=value, original_unit="ng/mL")
    return PatientFacts(patient_id="p1", as_of=AS_OF, measurements={"vitamin-d-25oh": [meas]})


def test_real_rules_load_and_hold_terminology():
    rules = load_rules(Config())
    assert rules.terminology is not None
    assert rules.vitamin_d.profile_name == "endocrine-society-2024"   # the default since issue 9
    assert load_rules(Config(vitamin_d_profile="endocrine-society-2011")).vitamin_d.profile_name \
        == "endocrine-society-2011"                                     # still selectable
    assert rules.sarcopenia.profile_name == "ewgsop2-2019"
    assert set(rules.prefetch_templates()) >= {"patient", "observations"}
    assert rules.prefetch_templates() == rules.terminology.prefetch_templates()


@pytest.mark.parametrize("vd,sarc", [("iom-2011", "awgs-2019"), ("endocrine-society-2011", "fnih")])
def test_profiles_selected_by_config(vd, sarc):
    rules = load_rules(Config(vitamin_d_profile=vd, sarcopenia_profile=sarc))
    assert (rules.vitamin_d.profile_name, rules.sarcopenia.profile_name) == (vd, sarc)


@pytest.mark.parametrize("setting,value,file", [("vitamin_d_profile", "nice-2023", "vitamin_d.yaml"),
                                                ("sarcopenia_profile", "ewgsop1", "sarcopenia.yaml")])
def test_unknown_profile_stops_start_up_with_clear_error(setting, value, file):
    with pytest.raises(RulesError) as err:
        load_rules(Config(**{setting: value}))
    assert file in str(err.value) and value in str(err.value) and "profiles" in str(err.value)
    assert isinstance(err.value, ConfigError)   # the HTTP/CLI start-up reports it as a setting error


def test_threshold_change_in_a_copy_flips_the_outcome(rules_copy):
    facts = vitamin_d_facts(22.0)
    assert [f.code for f in evaluate(facts, load(rules_copy, vitamin_d_profile="endocrine-society-2011"))] == ["vitamin-d-insufficiency"]

    def lower_deficiency(data):
        bands = data["profiles"]["endocrine-society-2011"]["bands"]
        bands[0]["below"] = 25
        bands[1]["at_least"] = 25
    edit(rules_copy / "vitamin_d.yaml", lower_deficiency)
    assert [f.code for f in evaluate(facts, load(rules_copy, vitamin_d_profile="endocrine-society-2011"))] == ["vitamin-d-deficiency"]


def test_changed_threshold_without_a_stated_nmol_value_uses_the_exact_conversion(rules_copy):
    """A cut-off the guideline table does not state in nmol/L is compared by exact conversion
    (1 ng/mL = 2.496 nmol/L), so one edit changes the rule in both units."""
    from cds.fhir.normalize import normalize

    def obs(value):
        return [{"resourceType": "Patient", "id": "p1"},
                {"resourceType": "Observation", "id": "o1", "status": "final",
                 "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2026-11-01",
                 "code": {"coding": [{"system": "http://loinc.org", "code": "14635-7"}]},
                 "valueQuantity": {"value": value, "unit": "nmol/L", "code": "nmol/L",
                                   "system": "http://unitsofmeasure.org"}}]

    def finding(rules, value):
        return [f.code for f in evaluate(normalize(obs(value), "p1", rules, as_of=AS_OF), rules)]

    assert finding(load(rules_copy, vitamin_d_profile="endocrine-society-2011"), 55.0) == ["vitamin-d-insufficiency"]   # 20 ng/mL = 50 nmol/L
    edit(rules_copy / "vitamin_d.yaml", lambda d: (
        d["profiles"]["endocrine-society-2011"]["bands"][0].update(below=25),
        d["profiles"]["endocrine-society-2011"]["bands"][1].update(at_least=25)))
    rules = load(rules_copy, vitamin_d_profile="endocrine-society-2011")
    assert finding(rules, 62.3) == ["vitamin-d-deficiency"]      # 24.96 ng/mL < 25
    assert finding(rules, 62.5) == ["vitamin-d-insufficiency"]   # 25.04 ng/mL


def test_card_wording_lives_in_rules(rules_copy):
    from cds.cards.builder import build_cards

    def reword(data):
        data["findings"]["vitamin-d-deficiency"]["summary"] = "VITD LOW {value} {unit} on {date}"
    edit(rules_copy / "cards.yaml", reword)
    rules = load(rules_copy, vitamin_d_profile="endocrine-society-2011")
    facts = vitamin_d_facts(15.0)
    (card,) = build_cards(evaluate(facts, rules), facts, rules)
    assert card["summary"] == "VITD LOW 15 ng/mL on 2026-11-17"


def _set(path):
    def change(data):
        node = data
        for key in path[:-2]:
            node = node[key]
        node[path[-2]] = path[-1]
    return change


BROKEN = [
    # (file, change, words the message must contain)
    ("vitamin_d.yaml", _set(["profiles", "endocrine-society-2011", "bands", 0, "below", "twenty"]),
     ["vitamin_d.yaml", "profiles.endocrine-society-2011.bands[0].below"]),
    ("vitamin_d.yaml", lambda d: d["profiles"]["iom-2011"]["bands"][1].update(at_least=10),
     ["vitamin_d.yaml", "profiles.iom-2011.bands", "overlap"]),
    ("vitamin_d.yaml", lambda d: d["profiles"]["endocrine-society-2011"]["bands"][0]["citation"].update(id="nobody-1999"),
     ["vitamin_d.yaml", "profiles.endocrine-society-2011.bands[0].citation.id", "nobody-1999"]),
    ("vitamin_d.yaml", lambda d: d["profiles"]["endocrine-society-2011"]["bands"][0]["grades"][0].update(below=25),
     ["vitamin_d.yaml", "grades[0]", "not inside its band"]),
    ("vitamin_d.yaml", lambda d: d.pop("max_age_days"), ["vitamin_d.yaml", "max_age_days"]),
    ("vitamin_d.yaml", lambda d: d["stated_equivalents"]["nmol/L"].update({100: 25}),
     ["vitamin_d.yaml", "stated_equivalents.nmol/L.100", "not within 1%"]),
    ("vitamin_d.yaml", lambda d: d["stated_equivalents"].update({"mg/dL": {20: 1}}),
     ["vitamin_d.yaml", "stated_equivalents.mg/dL"]),
    ("bone.yaml", lambda d: d["t_score"]["osteoporosis"].update(above=-1.0),
     ["bone.yaml", "t_score.osteoporosis", "empty range"]),
    ("bone.yaml", lambda d: d["diagnostic_sites"].append("calcaneus"),
     ["bone.yaml", "diagnostic_sites", "calcaneus"]),
    ("bone.yaml", lambda d: d["screening"]["female"].update(at_least=65, above=60),
     ["bone.yaml", "screening.female.at_least"]),
    ("sarcopenia.yaml", lambda d: d["profiles"]["fnih"]["mass"][0].update(measure="calf"),
     ["sarcopenia.yaml", "profiles.fnih.mass[0].measure"]),
    ("sarcopenia.yaml", lambda d: d["profiles"]["awgs-2019"]["grip"].pop("female"),
     ["sarcopenia.yaml", "profiles.awgs-2019.grip.female"]),
    ("cards.yaml", lambda d: d["findings"]["osteoporosis"].update(summary="T {tscore}"),
     ["cards.yaml", "findings.osteoporosis.summary", "{tscore}"]),
    ("cards.yaml", lambda d: d["findings"].pop("sarcopenia-severe"),
     ["cards.yaml", "findings", "sarcopenia-severe"]),
    ("cards.yaml", lambda d: d["findings"]["osteoporosis"]["suggestions"].append({"id": "order-mri"}),
     ["cards.yaml", "findings.osteoporosis.suggestions[3].id", "order-mri"]),
    ("cards.yaml", lambda d: d["suggestions"]["order-dxa"]["resource"].update(code={"$orderable": "dxa-made-up"}),
     ["cards.yaml", "suggestions.order-dxa.resource", "dxa-made-up"]),
    ("cards.yaml", lambda d: d["suggestions"]["order-dxa"]["resource"].update(subject="Patient/{patient_id}"),
     ["cards.yaml", "suggestions.order-dxa.resource", "ServiceRequest"]),
    ("cards.yaml", lambda d: d["findings"]["osteoporosis"]["notes"].update({"tired": "x"}),
     ["cards.yaml", "findings.osteoporosis.notes"]),
    ("cards.yaml", lambda d: d["findings"]["low-bone-mass"].update(problem_category="bone-thing"),
     ["cards.yaml", "findings.low-bone-mass.problem_category", "bone-thing"]),
    ("citations.yaml", lambda d: d["citations"]["holick-2011"].update(doi="jc.2011-0385"),
     ["citations.yaml", "citations.holick-2011.doi"]),
    ("citations.yaml", lambda d: d["citations"].pop("who-1994"),
     ["bone.yaml", "who-1994"]),
]


@pytest.mark.parametrize("file,change,words", BROKEN, ids=[f"{b[0]}-{i}" for i, b in enumerate(BROKEN)])
def test_broken_rules_file_names_file_and_field(rules_copy, file, change, words):
    edit(rules_copy / file, change)
    with pytest.raises(RulesError) as err:
        load(rules_copy)
    message = str(err.value)
    for word in words:
        assert word in message, message


def test_not_yaml_and_missing_file(rules_copy):
    (rules_copy / "sarcopenia.yaml").write_text("profiles: [unclosed", encoding="utf-8")
    with pytest.raises(RulesError, match="sarcopenia.yaml: not valid YAML"):
        load(rules_copy)
    (rules_copy / "sarcopenia.yaml").unlink()
    with pytest.raises(RulesError, match="sarcopenia.yaml: cannot read"):
        load(rules_copy)


@pytest.mark.slow  # starts processes
def test_bad_rules_stop_the_cli_with_a_message_not_a_traceback(rules_copy):
    edit(rules_copy / "bone.yaml", lambda d: d.pop("t_score"))
    proc = subprocess.run([sys.executable, "-m", "cds.cli.main", "evaluate",
                           str(REPO / "fhir_examples" / "healthy.request.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={"MSKCDS_RULES_DIR": str(rules_copy), "PATH": "/usr/bin:/bin",
                               "MSKCDS_REQUIRE_AUTH": "false"})
    assert proc.returncode != 0
    assert "bone.yaml" in proc.stderr and "t_score" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_discovery_text_lives_in_rules(rules_copy):
    from cds.engine import Engine

    edit(rules_copy / "cards.yaml", lambda d: d["service"].update(title="Knochen und Muskeln"))
    edit(rules_copy / "cards.yaml", lambda d: d["services"]["bone-health-order-sign"].update(
        title="Knochen: Anordnungen vor der Unterschrift"))
    services = {s["id"]: s for s in Engine(Config(rules_dir=rules_copy)).discovery()["services"]}
    service = services["bone-muscle-health"]
    assert service["title"] == "Knochen und Muskeln"
    assert service["prefetch"]["patient"] == "Patient/{{context.patientId}}"
    assert services["bone-health-order-sign"]["title"] == "Knochen: Anordnungen vor der Unterschrift"
    assert services["bone-health-order-select"]["title"] != services["bone-health-order-sign"]["title"]


def test_long_summary_is_cut_below_140_characters(rules_copy):
    from cds.hooks import wire
    from cds.cards.builder import build_cards

    edit(rules_copy / "cards.yaml", lambda d: d["findings"]["vitamin-d-deficiency"].update(
        summary="Vitamin D deficiency {value} {unit}; treat: {regimen} Then again: {regimen}",
        summary_by_grade={}))
    rules = load(rules_copy, vitamin_d_profile="endocrine-society-2011")   # its long regimen
    facts = vitamin_d_facts(15.0)
    (card,) = build_cards(evaluate(facts, rules), facts, rules)
    assert len(card["summary"]) < 140 and card["summary"].endswith("…")
    wire.check_card(card)
