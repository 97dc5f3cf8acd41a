"""Rule documentation built from rules/: every finding documented, every profile's thresholds in
every unit, the codes read, and a broken rules/pages.yaml stops start-up with its name.

The expected numbers are written by hand from the guidelines (cited per row), not taken from the
code under test."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from cds.config import Config
from cds.knowledge.loader import RulesError
from cds.knowledge.rules import load_rules
from cds.knowledge.vocabulary import FINDINGS
from cds.pages.ruledocs import build_docs

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def docs():
    config = Config.from_env({"require_auth": False}, environ={})
    return build_docs(config, load_rules(config))


def texts(doc) -> str:
    """Everything the finding's threshold tables say, one string."""
    return "\n".join(f"{t.title} | {r.what} | " + " | ".join(text for _, text in r.rules)
                     for t in doc.tables for r in t.rows)


# (finding, profile table title, text that must appear in that table, source of the number)
THRESHOLDS = [
    ("vitamin-d-deficiency", "Endocrine Society 2011", "< 20 ng/mL", "Holick 2011, rec. 1.2"),
    ("vitamin-d-deficiency", "Endocrine Society 2011", "< 50 nmol/L", "Holick 2011, rec. 1.2"),
    ("vitamin-d-deficiency", "Endocrine Society 2011", "< 12 ng/mL", "IOM 2011 ch. 8 (severe grade)"),
    ("vitamin-d-deficiency", "IOM 2011", "< 30 nmol/L", "IOM 2011 ch. 8: at risk below 30 nmol/L"),
    ("vitamin-d-excess", "Endocrine Society 2011", "> 250 nmol/L", "Holick 2011: up to 250 nmol/L safe"),
    ("vitamin-d-excess", "Endocrine Society 2011", "≥ 150 ng/mL", "Holick 2011: intoxication > 150"),
    ("vitamin-d-excess", "IOM 2011", "> 125 nmol/L", "IOM 2011 ch. 8: concern above 125 nmol/L"),
    ("osteoporosis", "", "≤ -2.5", "WHO 1994: T-score -2.5 or lower"),
    ("low-bone-mass", "", "> -2.5 and < -1", "WHO 1994: between -1.0 and -2.5"),
    ("bmd-below-expected-for-age", "", "≤ -2", "ISCD 2023: Z-score -2.0 or lower"),
    ("dxa-screening-due", "", "≥ 65 years", "USPSTF 2025: women 65 or older"),
    ("dxa-screening-due", "", "≥ 70 years", "ISCD 2023: men 70 and older"),
    ("sarcopenia-probable", "EWGSOP2 2019", "< 27 kg", "EWGSOP2 Table 3: grip < 27 kg men"),
    ("sarcopenia-probable", "EWGSOP2 2019", "< 16 kg", "EWGSOP2 Table 3: grip < 16 kg women"),
    ("sarcopenia-probable", "AWGS 2019", "< 28 kg", "AWGS 2019: handgrip < 28 kg men"),
    ("sarcopenia-probable", "FNIH 2014", "< 26 kg", "FNIH 2014: grip < 26 kg men"),
    # 27 kg / 0.45359237 kg per lbf (UCUM [lbf_av]) = 59.52 lbf
    ("sarcopenia-probable", "EWGSOP2 2019", "< 59.52 lbf", "EWGSOP2 Table 3, in pound-force"),
    ("sarcopenia-severe", "EWGSOP2 2019", "≤ 0.8 m/s", "EWGSOP2 Table 3: gait <= 0.8 m/s"),
    ("sarcopenia-severe", "AWGS 2019", "< 1 m/s", "AWGS 2019: 6-m walk < 1.0 m/s"),
    ("low-muscle-mass", "EWGSOP2 2019", "< 7 kg/m²", "EWGSOP2 Table 3: ASM/height² < 7.0 men"),
    ("low-muscle-mass", "AWGS 2019", "< 5.4 kg/m²", "AWGS 2019: DXA < 5.4 kg/m² women"),
]


@pytest.mark.parametrize("finding,table,text,source", THRESHOLDS)
def test_threshold_shown_per_profile_and_unit(docs, finding, table, text, source):
    doc = docs.findings[finding]
    rows = [r for t in doc.tables if t.title == table or (table == "" and t.title in ("",
            "Under every profile")) for r in t.rows]
    shown = [text_ for r in rows for _, text_ in r.rules]
    assert text in shown, f"{finding}: {text} ({source}) not in {table or 'the table'}: {shown}"


def test_every_finding_has_a_page_with_rule_codes_and_sources(docs):
    assert list(docs.findings) == list(FINDINGS)
    for code, doc in docs.findings.items():
        assert len(doc.rule) > 40, code
        assert doc.tables and all(t.rows for t in doc.tables), code
        assert doc.codes and any(g.codes for g in doc.codes), code
        assert doc.citations, code
        for c in doc.citations:
            assert c.url.startswith("https://") or c.url.startswith("http://"), (code, c.id)
            assert c.title and c.year, (code, c.id)


def test_every_selectable_profile_is_listed_and_one_per_setting_active(docs):
    for setting, names in (("MSKCDS_VITAMIN_D_PROFILE",
                            set(yaml.safe_load((REPO / "rules/vitamin_d.yaml").read_text())["profiles"])),
                           ("MSKCDS_SARCOPENIA_PROFILE",
                            set(yaml.safe_load((REPO / "rules/sarcopenia.yaml").read_text())["profiles"]))):
        listed = [p for p in docs.profiles if p.setting == setting]
        assert {p.name for p in listed} == names
        assert sum(p.active for p in listed) == 1


def test_vitamin_d_pages_show_every_profile_table(docs):
    titles = [t.title for t in docs.findings["vitamin-d-deficiency"].tables]
    assert {"Endocrine Society 2024", "Endocrine Society 2011", "IOM 2011"} <= set(titles)
    active = [t.title for t in docs.findings["vitamin-d-deficiency"].tables if t.active]
    assert active == ["Endocrine Society 2024"]   # the embedded default (issue 9)


def test_codes_read_are_those_of_the_value_sets(docs):
    groups = {g.title: g for g in docs.findings["vitamin-d-deficiency"].codes}
    obs = next(g for t, g in groups.items() if t.startswith("25(OH)D"))
    assert {c.code for c in obs.codes} >= {"62292-8"}   # total 25(OH)D (valuesets.yaml, sourced)
    assert all(c.system == "LOINC" for c in obs.codes)


def test_suggestions_say_what_they_create(docs):
    sug = {s.label: s for s in docs.findings["dxa-screening-due"].suggestions}
    (order,) = sug.values()
    assert "ServiceRequest" in order.creates and "38268-9" in order.creates
    vd = {s.label: s for s in docs.findings["vitamin-d-deficiency"].suggestions}
    course = next(s for label, s in vd.items() if "cholecalciferol" in label.lower())
    assert course.when.startswith("not when") and "kidney failure" in course.when


def _rules_copy(tmp_path: Path) -> Path:
    out = tmp_path / "rules"
    shutil.copytree(REPO / "rules", out)
    return out


def test_a_finding_without_a_page_stops_start_up(tmp_path):
    rules_dir = _rules_copy(tmp_path)
    pages = yaml.safe_load((rules_dir / "pages.yaml").read_text())
    del pages["findings"]["osteoporosis"]
    (rules_dir / "pages.yaml").write_text(yaml.safe_dump(pages, sort_keys=False))
    config = Config.from_env({"rules_dir": str(rules_dir)}, environ={})
    with pytest.raises(RulesError, match="pages.yaml.*no page for osteoporosis"):
        build_docs(config, load_rules(config))


def test_an_unknown_threshold_group_stops_start_up(tmp_path):
    rules_dir = _rules_copy(tmp_path)
    pages = yaml.safe_load((rules_dir / "pages.yaml").read_text())
    pages["findings"]["osteoporosis"]["thresholds"].append("t-score-typo")
    (rules_dir / "pages.yaml").write_text(yaml.safe_dump(pages, sort_keys=False))
    config = Config.from_env({"rules_dir": str(rules_dir)}, environ={})
    with pytest.raises(RulesError, match="pages.yaml"):
        build_docs(config, load_rules(config))
