"""The sandbox's token registry (shared by its REST and Pub/Sub servers)."""

from __future__ import annotations

import threading

import pytest

from kpi_pipeline.sandbox.tokens import TokenRegistry


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_issued_tokens_are_valid_until_the_session_ends() -> None:
    clock = Clock()
    registry = TokenRegistry(session_seconds=100, clock=clock, tenant_id="00D000000000001AAA")
    token = registry.issue("u@example.com")
    assert token.startswith("00D000000000001AAA!")
    assert registry.is_valid(token) and registry.username_for(token) == "u@example.com"
    clock.now += 99.9
    assert registry.is_valid(token)
    clock.now += 0.1
    assert not registry.is_valid(token)
    clock.now -= 50  # an expired session does not come back
    assert not registry.is_valid(token)
    assert registry.username_for(token) is None


def test_static_tokens_and_unknown_tokens() -> None:
    registry = TokenRegistry(["static-1", ""])
    assert registry.is_valid("static-1")
    assert not registry.is_valid("")
    assert not registry.is_valid("guess")
    assert registry.username_for("static-1") is None


def test_expire_all_ends_issued_sessions_and_optionally_static_ones() -> None:
    registry = TokenRegistry(["static-1"])
    tokens = [registry.issue(f"u{i}") for i in range(3)]
    assert registry.expire_all() == 3
    assert not any(registry.is_valid(t) for t in tokens)
    assert registry.is_valid("static-1")
    assert registry.expire_all(include_static=True) == 1
    assert not registry.is_valid("static-1")


def test_tokens_are_unique_and_registry_is_thread_safe() -> None:
    registry = TokenRegistry()
    issued: list[str] = []

    def work() -> None:
        for _ in range(200):
            token = registry.issue("u")
            assert registry.is_valid(token)
            issued.append(token)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(issued)) == 800 == registry.issued_count


def test_repr_hides_tokens_and_bad_lifetime_is_refused() -> None:
    registry = TokenRegistry(["static-secret"])
    token = registry.issue("u")
    assert "static-secret" not in repr(registry) and token not in repr(registry)
    with pytest.raises(ValueError, match="session_seconds"):
        TokenRegistry(session_seconds=0)
