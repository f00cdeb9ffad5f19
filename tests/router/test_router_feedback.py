"""Served-prediction memory (LRU) and scoring of delayed labels."""

from __future__ import annotations

import pytest

from router.feedback import Served, ServedMemory, score


def test_memory_never_holds_more_than_its_capacity():
    memory = ServedMemory(capacity=50)
    for i in range(500):
        memory.remember(f"img-{i}", Served("stable", "1", str(i % 10)))
        assert len(memory) == min(i + 1, 50)
    assert memory.take("img-0") == []  # evicted first
    assert memory.take("img-499") == [Served("stable", "1", "9")]


def test_recently_used_entries_survive_eviction():
    memory = ServedMemory(capacity=2)
    memory.remember("a", Served("stable", "1", "1"))
    memory.remember("b", Served("stable", "1", "2"))
    memory.remember("a", Served("canary", "2", "1"))  # touch a
    memory.remember("c", Served("stable", "1", "3"))  # evicts b
    assert memory.take("b") == []
    assert len(memory.take("a")) == 2


def test_each_label_is_scored_once():
    memory = ServedMemory(capacity=10)
    memory.remember("x", Served("stable", "1", "7"))
    memory.remember("x", Served("canary", "2", "1"))
    scored = score(memory.take("x"), " 7 ")
    assert {(s.variant, ok) for s, ok in scored} == {("stable", True), ("canary", False)}
    assert memory.take("x") == []


def test_capacity_must_be_positive():
    with pytest.raises(ValueError):
        ServedMemory(0)
