"""Operator tooling: the govml CLI, the embedded stack supervisor, the demo."""
