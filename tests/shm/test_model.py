"""A model-based test: the Counter table against a plain dict.

Hypothesis drives random sequences of every verb over a small key space and a
small capacity, so full tables, tombstones and their reuse come up often.
"""
from __future__ import annotations

import uuid

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import shmdict

CAPACITY = 6
KEYS = st.sampled_from(["a", "b", b"a", 1, -1, 0, ("a", 1), ("a", "b"), "", 2**40, "long" * 10])
VALUES = st.integers(min_value=-2**62, max_value=2**62)


class CounterModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.name = f"test.model.{uuid.uuid4().hex[:12]}"
        self.table = shmdict.open(self.name, shmdict.Counter(), capacity=CAPACITY)
        self.model: dict = {}

    def teardown(self) -> None:
        self.table.unlink()

    def _creates(self, key) -> bool:
        """Would creating ``key`` overflow the table?  Then expect TableFull."""
        return key not in self.model and len(self.model) >= CAPACITY

    @rule(key=KEYS, n=st.integers(min_value=-1000, max_value=1000))
    def add(self, key, n):
        if self._creates(key):
            try:
                self.table.add(key, n)
                raise AssertionError("expected TableFull")
            except shmdict.TableFull:
                return
        self.model[key] = self.model.get(key, 0) + n
        assert self.table.add(key, n) == self.model[key]

    @rule(key=KEYS, value=VALUES)
    def set(self, key, value):
        if self._creates(key):
            try:
                self.table.set(key, value)
                raise AssertionError("expected TableFull")
            except shmdict.TableFull:
                return
        self.table.set(key, value)
        self.model[key] = value

    @rule(key=KEYS, value=VALUES)
    def exchange(self, key, value):
        if self._creates(key):
            return
        assert self.table.exchange(key, value) == self.model.get(key, 0)
        self.model[key] = value

    @rule(key=KEYS, old=st.sampled_from([0, 1, 5]), new=VALUES, set_missing=st.booleans())
    def cas(self, key, old, new, set_missing):
        if key not in self.model:
            if set_missing and self._creates(key):
                return
            expected = set_missing
        else:
            expected = self.model[key] == old
        assert self.table.cas(key, old, new, set_on_not_exists=set_missing) == expected
        if expected:
            self.model[key] = new

    @rule(key=KEYS)
    def delete(self, key):
        self.table.delete(key)
        self.model.pop(key, None)

    @rule(key=KEYS)
    def load_and_delete(self, key):
        expected = (self.model.pop(key), True) if key in self.model else (0, False)
        assert self.table.load_and_delete(key) == expected

    @rule(key=KEYS)
    def read(self, key):
        expected = (self.model[key], True) if key in self.model else (0, False)
        assert self.table.read(key) == expected

    @precondition(lambda self: len(self.model) < CAPACITY)
    @rule(key=KEYS)
    def load(self, key):
        handle, existed = self.table.load(key)
        assert existed == (key in self.model)
        self.model.setdefault(key, 0)
        assert handle.value == self.model[key]

    @invariant()
    def same_contents(self):
        assert len(self.table) == len(self.model)
        assert dict(self.table.items()) == self.model

    @invariant()
    def consistent(self):
        assert self.table.check()


CounterModel.TestCase.settings = settings(max_examples=60, stateful_step_count=40,
                                          deadline=None)
TestCounterModel = CounterModel.TestCase
