"""cnmd's --anti-spoofing flag: on by default, off on request, garbage refused."""

from __future__ import annotations

import pytest

from cnm.daemon.config import parse_args
from cnm.errors import InvalidArgument


def test_anti_spoofing_is_on_by_default():
    assert parse_args([]).anti_spoofing is True
    assert parse_args(["--anti-spoofing"]).anti_spoofing is True


@pytest.mark.parametrize("value", ["false", "0", "off", "no"])
def test_anti_spoofing_can_be_turned_off(value):
    assert parse_args([f"--anti-spoofing={value}"]).anti_spoofing is False


def test_a_garbage_value_is_refused_naming_the_flag():
    with pytest.raises(InvalidArgument, match="--anti-spoofing"):
        parse_args(["--anti-spoofing=maybe"])
