"""Waiting on a condition with a deadline: tests and benches never sleep a guessed time."""

from __future__ import annotations

from console.waiting import wait_for

__all__ = ["wait_for"]
