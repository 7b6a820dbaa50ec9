import pytest

from obliviate.errors import UnknownNameError
from obliviate.methods import METHODS
from obliviate.registry import Registry


def test_register_get_and_meta():
    reg = Registry("widget")

    @reg.register("Alpha", aliases=("A",), tracks=("vision",))
    class Alpha: ...

    assert reg.get("Alpha") is Alpha
    assert reg.get("A") is Alpha
    assert reg.canonical("A") == "Alpha"
    assert reg.meta("A") == {"tracks": ("vision",)}
    assert reg.names(tracks="vision") == ["Alpha"]
    assert reg.names(tracks="llm") == []
    assert "A" in reg and "Alpha" in reg and len(reg) == 1


def test_duplicate_names_and_aliases_are_rejected():
    reg = Registry("widget")
    reg.add("x", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.add("x", 2)
    with pytest.raises(ValueError, match="already registered"):
        reg.add("y", 3, aliases=("x",))


def test_unknown_name_suggests_close_matches():
    reg = Registry("method")
    for name in ("GradDiff", "GradAscent", "NPO", "SimNPO"):
        reg.add(name, name)
    with pytest.raises(UnknownNameError) as err:
        reg.get("GradDif")
    msg = str(err.value)
    assert "unknown method 'GradDif'" in msg and "Did you mean: GradDiff" in msg
    with pytest.raises(UnknownNameError, match="Did you mean: NPO"):
        reg.get("npo")  # case-insensitive match is offered first


def test_method_registry_has_the_foundation_methods():
    for name in ("FT", "GA", "GradAscent", "GradDiff", "RL"):
        assert name in METHODS
    assert METHODS.get("GradAscent") is METHODS.get("GA")
