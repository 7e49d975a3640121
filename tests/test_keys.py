"""Keys: canonical, type-distinct encoding; names; bad keys leave tables intact."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import shmdict
from shmdict.keys import decode_key, encode_key
from shmdict.validate import validate_name

keys = st.recursive(
    st.one_of(st.text(max_size=8), st.binary(max_size=8),
              st.integers(min_value=-2**70, max_value=2**70)),
    lambda inner: st.tuples(inner) | st.tuples(inner, inner) | st.tuples(inner, inner, inner),
    max_leaves=6)


@given(keys)
def test_encoding_round_trips(key):
    assert decode_key(encode_key(key, 4096)) == key


@given(keys, keys)
def test_encoding_is_injective(a, b):
    if a != b:
        assert encode_key(a, 4096) != encode_key(b, 4096)


def test_types_are_distinct_but_true_is_one(counter):
    counter.add(1)
    counter.add("1", 2)
    counter.add(b"1", 3)
    assert counter.read(1) == (1, True)
    assert counter.read("1") == (2, True)
    assert counter.read(b"1") == (3, True)
    counter.add(True, 10)
    assert counter.read(1) == (11, True)
    assert len(counter) == 3
    counter.add((1, "a"))
    assert counter.read((True, "a")) == (1, True)


@pytest.mark.parametrize("bad", [1.0, 1.5, None, [1], {"a": 1}, object(), (1, 2.0), frozenset()])
def test_other_key_types_raise_type_error(counter, bad):
    counter.add("keep", 5)
    with pytest.raises(TypeError):
        counter.add(bad)
    with pytest.raises(TypeError):
        counter.read(bad)
    assert bad not in counter
    assert counter.read("keep") == (5, True) and len(counter) == 1


def test_float_never_aliases_an_int_key(counter):
    counter.add(1)   # cached per process: a dict lookup would find 1 for 1.0
    with pytest.raises(TypeError):
        counter.add(1.0)
    assert counter.read(1) == (1, True)


def test_key_size_bound(name):
    d = shmdict.open(name, shmdict.Counter(), capacity=10, key_size=16)
    try:
        d.add("x" * 15)                          # 15 + 1 tag byte = 16
        with pytest.raises(shmdict.KeyTooLong, match="key_size is 16"):
            d.add("x" * 16)
        with pytest.raises(ValueError):          # KeyTooLong is a ValueError
            d.add(b"y" * 40)
        assert len(d) == 1 and d.check()
    finally:
        d.close()


@pytest.mark.parametrize("bad", ["", "a/b", "../x", "a b", "x" * 201, "é", ".", ".."])
def test_bad_names(bad):
    with pytest.raises(ValueError):
        validate_name(bad)
    with pytest.raises(ValueError):
        shmdict.open(bad, shmdict.Counter())


def test_name_must_be_str():
    with pytest.raises(TypeError):
        shmdict.open(b"bytes-name", shmdict.Counter())


c_keys = st.recursive(
    st.one_of(st.text(max_size=12), st.binary(max_size=12), st.booleans(),
              st.integers(min_value=-2**64, max_value=2**64)),
    lambda inner: st.lists(inner, max_size=4).map(tuple), max_leaves=10)


@given(c_keys, st.sampled_from([4, 16, 64, 300]))
def test_the_core_encodes_common_keys_exactly_as_python(key, cap):
    """The C core encodes str/bytes/int64/tuple keys itself (the hot path);
    where it declines (None), the Python encoder is used.  Where it answers,
    the bytes must be the Python encoder's, or the tables would disagree."""
    from shmdict.backends.shm import _core
    from shmdict.errors import KeyTooLong
    ours = _core.encode_key(key, cap)
    try:
        theirs = encode_key(key, cap)
    except (KeyTooLong, TypeError):
        theirs = None
    if ours is not None:
        assert ours == theirs
    elif theirs is not None:
        # Declined although Python encodes it: only for what C leaves to
        # Python (ints beyond int64, lone surrogates) or a tight fit.
        assert _needs_python(key) or len(theirs) >= cap - 2


def _needs_python(key) -> bool:
    if isinstance(key, tuple):
        return any(_needs_python(k) for k in key)
    if isinstance(key, int):
        return not -2**63 <= key < 2**63
    if isinstance(key, str):
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            return True
    return False


def test_keys_the_core_declines_still_work(counter):
    counter.add(2**70)                       # beyond int64: the Python encoder
    counter.add("\ud800")                    # a lone surrogate: likewise
    counter.add((2**70, "\ud800"))
    assert counter.read(2**70) == (1, True) and counter.read("\ud800") == (1, True)
    assert counter.read((2**70, "\ud800")) == (1, True)
