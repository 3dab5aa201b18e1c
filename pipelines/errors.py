"""The project's error hierarchy.

Every error a user can cause (bad spec, bad data, failed gate, refused approval,
registry or deployment problem) is a ``GovMLError``. The CLI prints its message on
one line and exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class GovMLError(Exception):
    """Base class for every error the project raises on purpose."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(GovMLError):
    """A setting (environment variable, URL, port, path) is invalid."""


class SpecError(GovMLError):
    """A model spec file is missing, unreadable or fails validation."""

    exit_code = 2


class DataValidationError(GovMLError):
    """A data file does not match what the spec or a data check requires."""

    exit_code = 3


class GateFailedError(GovMLError):
    """One or more gates (metric, fairness, drift) failed; lists every failure."""

    exit_code = 4

    def __init__(self, failures: list[str]) -> None:
        self.failures = list(failures)
        lines = "; ".join(self.failures)
        super().__init__(f"{len(self.failures)} gate(s) failed: {lines}")


class ApprovalError(GovMLError):
    """An approval is missing, refused, expired or breaks the four-eyes rules."""

    exit_code = 5


class RegistryError(GovMLError):
    """The model registry or governance store refused or lost something."""

    exit_code = 6


class DeploymentError(GovMLError):
    """A deployment, rollout or model server failed."""

    exit_code = 7


class StackError(GovMLError):
    """A local service of the embedded stack could not be started or stopped."""

    exit_code = 8
