"""The trend charts draw the active rules' cut-offs: for BMD, the least-significant-change band
(rules/bone.yaml lsc_percent: ISCD minimum precision, lumbar spine 5.3 %, total hip 5.0 %,
femoral neck 6.9 %) around the previous scan of the same site, from that scan's date on."""
from __future__ import annotations

import shutil
from datetime import date, datetime, timezone
from pathlib import Path

import pytest

import cds
from cds.clinical.facts import Measurement, PatientFacts
from cds.config import Config
from cds.knowledge.rules import load_rules
from cds.pages.trends import chart_specs

AS_OF = date(2026, 11, 22)


def bmd(value: float, day: date, site: str) -> Measurement:
    when = datetime.combine(day, datetime.min.time(), timezone.utc)
    return Measurement(kind="bmd", value=value, unit="g/cm2", when=when, code="test|bmd",
                       display="BMD", original_value=value, original_unit="g/cm2", site=site)


def facts(*ms: Measurement) -> PatientFacts:
    return PatientFacts(patient_id="p1", as_of=AS_OF, gender="female", birth_date=date(1950, 1, 1),
                        measurements={"bmd": sorted(ms, key=lambda m: m.when, reverse=True)})


def chart(specs, chart_id):
    (spec,) = [s for s in specs if s.id == chart_id]
    return spec


@pytest.mark.parametrize("site,lsc", [("lumbar-spine", 5.3), ("total-hip", 5.0), ("femoral-neck", 6.9)])
def test_the_lsc_band_surrounds_the_previous_scan(site, lsc):
    rules = load_rules(Config())
    f = facts(bmd(0.950, date(2024, 10, 23), site), bmd(0.890, date(2026, 10, 23), site))
    spec = chart(chart_specs(f, rules), f"chart-bmd-{site}")
    (band,) = [b for b in spec.bands if b.tone == "change"]
    assert band.lower == pytest.approx(0.950 * (1 - lsc / 100))
    assert band.upper == pytest.approx(0.950 * (1 + lsc / 100))
    assert band.start == date(2024, 10, 23) and f"±{lsc:g}%" in band.label


def test_one_scan_has_no_band_and_a_site_without_an_lsc_says_so():
    rules = load_rules(Config())
    one = chart(chart_specs(facts(bmd(0.9, date(2026, 1, 5), "lumbar-spine")), rules),
                "chart-bmd-lumbar-spine")
    assert not [b for b in one.bands if b.tone == "change"]
    radius = chart(chart_specs(facts(bmd(0.6, date(2024, 1, 5), "radius"),
                                     bmd(0.55, date(2026, 1, 5), "radius")), rules), "chart-bmd-radius")
    assert not radius.bands and any("least-significant-change" in n for n in radius.notes)


def test_a_facility_lsc_in_the_rules_file_moves_the_band(tmp_path):
    src = Path(cds.__file__).resolve().parent.parent / "rules"
    dst = tmp_path / "rules"
    shutil.copytree(src, dst)
    text = (dst / "bone.yaml").read_text()
    assert "  lumbar-spine: 5.3\n" in text
    (dst / "bone.yaml").write_text(text.replace("  lumbar-spine: 5.3\n", "  lumbar-spine: 3.0\n", 1))
    rules = load_rules(Config(rules_dir=str(dst)))
    f = facts(bmd(1.0, date(2024, 10, 23), "lumbar-spine"), bmd(0.99, date(2026, 10, 23), "lumbar-spine"))
    (band,) = [b for b in chart(chart_specs(f, rules), "chart-bmd-lumbar-spine").bands if b.tone == "change"]
    assert (band.lower, band.upper) == (pytest.approx(0.97), pytest.approx(1.03))
