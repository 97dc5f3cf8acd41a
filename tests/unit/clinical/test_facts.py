"""The fast Measurement constructor normalize uses is the dataclass's own, field for field."""
from __future__ import annotations

import dataclasses
import inspect
from datetime import datetime, timezone

import pytest

from cds.clinical.facts import Measurement, new_measurement


def test_new_measurement_takes_exactly_the_fields_with_their_defaults() -> None:
    params = inspect.signature(new_measurement).parameters
    fields = dataclasses.fields(Measurement)
    assert list(params) == [f.name for f in fields]
    for f in fields:
        expected = inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default
        assert params[f.name].default == expected, f.name


def test_new_measurement_is_the_same_object_as_the_constructor_makes() -> None:
    values = dict(kind="t-score", value=-2.6, unit="{T-score}",
                  when=datetime(2026, 9, 23, 9, 30, tzinfo=timezone.utc), code="http://loinc.org|38267-1",
                  display="DXA Lumbar spine [T-score] Bone density", original_value=-2.6,
                  original_unit="{T-score}", site="lumbar-spine", resource_id="o1")
    fast, slow = new_measurement(**values), Measurement(**values)  # type: ignore[arg-type]
    assert fast == slow and hash(fast) == hash(slow)
    assert dataclasses.asdict(fast) == dataclasses.asdict(slow)
    assert fast.day == slow.day == values["when"].date()  # type: ignore[attr-defined]
    assert vars(fast) == vars(slow)   # slow.day now computed and kept too
    assert dataclasses.replace(fast, device="Device/1").device == "Device/1"
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.value = 0.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        new_measurement(**{**values, "unknown": 1})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        new_measurement(**{k: v for k, v in values.items() if k != "when"})  # type: ignore[arg-type]
