from __future__ import annotations

import pytest

from kpi_pipeline.core.checks import positive


def test_a_positive_value_is_returned_as_given() -> None:
    assert positive("keepalive_interval_s", 0.25) == 0.25


@pytest.mark.parametrize("value", [0, -1.5])
def test_a_value_not_above_zero_is_refused_with_the_parameter_name(value: float) -> None:
    with pytest.raises(ValueError, match=rf"^keepalive_interval_s must be > 0, got {value}$"):
        positive("keepalive_interval_s", value)
