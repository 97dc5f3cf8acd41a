"""Grip, lean-mass and gait-speed results older than rules.sarcopenia.max_result_age_days
(service policy, 730 days) are not read; the card says when only old results are on record.

EWGSOP2 2019 Table 3 cut-offs (women): grip < 16 kg, ASM index < 5.5 kg/m2, gait <= 0.8 m/s."""
from __future__ import annotations

import dataclasses

import pytest

from cds.cards.builder import build_card
from cds.clinical.evaluate import evaluate
from cds.config import Config
from cds.knowledge.rules import load_rules
from test_evaluate_rules import codes, facts, m


@pytest.fixture(scope="module")
def rules():
    return load_rules(Config())


LIMIT = 730

# (grip days ago, ASM index days ago, gait days ago, expected finding, expected flags)
CASES = [
    (10, 10, 10, "sarcopenia-severe", set()),
    (LIMIT, LIMIT, LIMIT, "sarcopenia-severe", set()),                 # on the limit: read
    (LIMIT + 1, 10, None, "low-muscle-mass", {"grip-old"}),            # grip too old
    (10, LIMIT + 1, None, "sarcopenia-probable", {"mass-old"}),        # mass too old
    (10, 10, LIMIT + 1, "sarcopenia-confirmed", {"gait-old"}),         # gait too old
    (10, 10, None, "sarcopenia-confirmed", {"gait-not-measured"}),     # gait never measured
    (LIMIT + 1, LIMIT + 1, LIMIT + 1, None, set()),                    # all too old: no card
]


@pytest.mark.parametrize("grip_days,mass_days,gait_days,expected,flags", CASES)
def test_results_older_than_the_limit_are_not_read(rules, grip_days, mass_days, gait_days,
                                                   expected, flags):
    assert rules.sarcopenia.max_result_age_days == LIMIT
    data = [m("grip-strength", 12, days_ago=grip_days, laterality="right"),
            m("appendicular-lean-mass-index", 4.8, days_ago=mass_days)]
    if gait_days is not None:
        data.append(m("gait-speed", 0.6, days_ago=gait_days))
    found = [f for f in evaluate(facts(*data, age=75), rules) if f.code != "dxa-screening-due"]
    assert codes(found) == ([expected] if expected else [])
    if expected:
        age_flags = {"grip-old", "mass-old", "gait-old", "gait-not-measured"}
        assert set(found[0].flags) & age_flags == flags


def test_an_old_normal_grip_does_not_hide_a_recent_low_one_and_old_low_does_not_count(rules):
    recent_low = [m("grip-strength", 12, days_ago=20, laterality="left"),
                  m("grip-strength", 30, days_ago=900, laterality="left")]
    (f,) = [f for f in evaluate(facts(*recent_low, age=75), rules) if f.code != "dxa-screening-due"]
    assert f.code == "sarcopenia-probable" and f.variables.grip.value == 12
    # the only low grip is 3 years old: no probable sarcopenia on it
    old_low = [m("grip-strength", 12, days_ago=1100, laterality="left")]
    assert codes(evaluate(facts(*old_low, age=75), rules)) == []


def test_an_old_unusable_result_no_longer_makes_its_kind_unknown(rules):
    data = [m("grip-strength", 12, days_ago=20, laterality="left")]
    base = facts(*data, age=75)
    from datetime import timedelta
    old_odd = dataclasses.replace(base, unusable={"appendicular-lean-mass": 1},
                                  unusable_latest={"appendicular-lean-mass":
                                                   base.as_of - timedelta(days=LIMIT + 5)})
    (f,) = [f for f in evaluate(old_odd, rules) if f.code != "dxa-screening-due"]
    assert f.code == "sarcopenia-probable" and "mass-indeterminate" not in f.flags
    recent_odd = dataclasses.replace(old_odd, unusable_latest={"appendicular-lean-mass":
                                                               base.as_of - timedelta(days=30)})
    (f,) = [f for f in evaluate(recent_odd, rules) if f.code != "dxa-screening-due"]
    assert f.code == "sarcopenia-probable" and "mass-indeterminate" in f.flags


def test_the_card_says_the_old_results_were_not_read(rules):
    data = [m("grip-strength", 12, days_ago=LIMIT + 30, laterality="right"),
            m("appendicular-lean-mass-index", 4.8, days_ago=10)]
    f_ = facts(*data, age=75)
    (f,) = [f for f in evaluate(f_, rules) if f.code != "dxa-screening-due"]
    card = build_card(f, f_, rules)
    assert "no recent grip strength" in card["summary"]
    assert "more than two years old" in card["detail"] and "not read" in card["detail"]


def test_the_limit_is_read_from_the_rules_file(tmp_path):
    import shutil
    from pathlib import Path

    import cds
    src = Path(cds.__file__).resolve().parent.parent / "rules"
    dst = tmp_path / "rules"
    shutil.copytree(src, dst)
    text = (dst / "sarcopenia.yaml").read_text()
    (dst / "sarcopenia.yaml").write_text(text.replace("max_result_age_days: 730",
                                                      "max_result_age_days: 3650"))
    wide = load_rules(Config(rules_dir=str(dst)))
    data = [m("grip-strength", 12, days_ago=1100, laterality="left")]
    assert codes(evaluate(facts(*data, age=75), wide)) == ["sarcopenia-probable"]
    (dst / "sarcopenia.yaml").write_text(text.replace("max_result_age_days: 730",
                                                      "max_result_age_days: two years"))
    from cds.knowledge.loader import RulesError
    with pytest.raises(RulesError, match="max_result_age_days"):
        load_rules(Config(rules_dir=str(dst)))
