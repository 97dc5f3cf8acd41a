"""Display rounding never contradicts the classification: a value is shown with as many
decimals as keep it on the side of the cut-off that classified it.

Cut-offs: FNIH 2014 abstract, low lean mass ALM/BMI < 0.789 (men); WHO / ISCD 2023,
osteoporosis T-score <= -2.5, low bone mass -2.5 < T < -1.0."""
from __future__ import annotations

import pytest

from cds.cards.builder import build_card
from cds.clinical.evaluate import evaluate
from cds.config import Config
from cds.knowledge.intervals import Interval, fmt_on_side
from cds.knowledge.rules import load_rules
from test_evaluate_rules import facts, m

OSTEOPOROSIS = Interval(None, False, -2.5, True)
LOW_BONE_MASS = Interval(-2.5, False, -1.0, False)
FNIH_MEN = Interval(None, False, 0.789, False)


@pytest.mark.parametrize("value,interval,fixed_one,shown", [
    (0.788, FNIH_MEN, False, "0.788"),      # 0.79 would read as not below 0.789
    (0.78896, FNIH_MEN, False, "0.78896"),  # 0.789 would sit on the cut-off
    (0.70, FNIH_MEN, False, "0.7"),         # far from it: the usual 2 decimals
    (0.7894, FNIH_MEN, False, "0.79"),      # not low, shown not low
    (-2.45, LOW_BONE_MASS, True, "-2.45"),  # -2.5 would read as osteoporosis
    (-2.5, OSTEOPOROSIS, True, "-2.5"),
    (-3.0, OSTEOPOROSIS, True, "-3.0"),     # one decimal as clinicians write scores
    (-0.96, LOW_BONE_MASS, True, "-1.0"),   # normal, and -1.0 is normal too
    (-1.04, LOW_BONE_MASS, True, "-1.04"),  # -1.0 would read as normal
    (-1.2, None, True, "-1.2"),
])
def test_fmt_on_side(value, interval, fixed_one, shown):
    assert fmt_on_side(value, interval, fixed=1 if fixed_one else None) == shown
    if interval is not None:
        assert interval.contains_point(float(shown)) == interval.contains_point(value)


def test_alm_bmi_just_below_the_fnih_cut_off_is_not_shown_at_it():
    rules = load_rules(Config(sarcopenia_profile="fnih"))
    # man: ALM 19.72 kg / BMI 25 kg/m2 = 0.7888 (< 0.789: low lean mass)
    data = [m("grip-strength", 20, laterality="right"), m("appendicular-lean-mass", 19.72),
            m("bmi", 25)]
    f_ = facts(*data, gender="male", age=70)
    (f,) = [f for f in evaluate(f_, rules) if f.code.startswith("sarcopenia")]
    card = build_card(f, f_, rules)
    assert "ALM/BMI 0.7888" in card["summary"]
    assert "- ALM/BMI: 0.7888 m²" in card["detail"]
    assert "0.79" not in card["summary"] + card["detail"]


def test_a_t_score_just_above_the_osteoporosis_cut_off_is_not_shown_at_it():
    rules = load_rules(Config())
    f_ = facts(m("t-score", -2.45, site="femoral-neck"), age=67)
    (f,) = [f for f in evaluate(f_, rules) if f.code == "low-bone-mass"]
    card = build_card(f, f_, rules)
    assert "-2.45" in card["summary"] + card["detail"] or "−2.45" in card["summary"] + card["detail"]
    assert "-2.5 " not in card["summary"] and "−2.5 " not in card["summary"]
