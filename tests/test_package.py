"""The public API: every exported name resolves, and an unknown one fails clearly."""
import pytest

import saecircuits as sc


def test_public_names_resolve():
    for name in sc.__all__:
        assert getattr(sc, name) is not None, name
    assert sc.steer.__module__.startswith("saecircuits.steering")
    assert sc.trace_circuit.__module__.startswith("saecircuits.attribution")
    with pytest.raises(AttributeError, match="no_such_thing"):
        sc.no_such_thing
