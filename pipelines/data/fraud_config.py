"""The fraud generator's vocabulary, random streams and configuration.

The category lists every fraud data set shares (segments, MCCs, channels, regions, age
bands, scenarios), the hour-of-day profile, one random stream per purpose so a knob only
changes what it should (:func:`stream_rng`), and :class:`FraudConfig` with its checks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.data.generator_config import GeneratorConfig
from pipelines.errors import DataValidationError

# ----------------------------------------------------------------------------- categories

SEGMENTS: tuple[str, ...] = (
    "grocery",
    "fuel",
    "restaurant",
    "electronics",
    "travel",
    "gambling",
    "retail",
    "online_marketplace",
    "bnpl",
)
MCC_BY_SEGMENT: dict[str, tuple[str, ...]] = {
    "grocery": ("5411",),
    "fuel": ("5541",),
    "restaurant": ("5812",),
    "electronics": ("5732",),
    "travel": ("4511", "7011"),
    "gambling": ("7995",),
    "retail": ("5310", "5311", "5944", "5999"),
    "online_marketplace": ("5999", "4829", "6051"),  # misc. retail, money transfer, crypto
    "bnpl": ("6012",),
}
MCCS: tuple[str, ...] = tuple(sorted({m for codes in MCC_BY_SEGMENT.values() for m in codes}))
CHANNELS: tuple[str, ...] = ("card_present", "online")
REGIONS: tuple[str, ...] = ("north", "south", "east", "west", "central")
AGE_BANDS: tuple[str, ...] = ("18-25", "26-35", "36-50", "51-65", "65+")
SCENARIOS: tuple[str, ...] = (
    "none",
    "card_testing",
    "account_takeover",
    "compromised_terminal",
    "new_pattern",
)
CRYPTO_MCC = "6051"

USUAL_TERMINALS = 10

SECONDS_PER_DAY = 86_400

SEG_INDEX = {name: i for i, name in enumerate(SEGMENTS)}
MCC_INDEX = {code: i for i, code in enumerate(MCCS)}
SCENARIO_INDEX = {name: i for i, name in enumerate(SCENARIOS)}

# hour-of-day profile (0..23) and day-of-week factor (Mon..Sun)
HOUR_PROFILE = np.array(
    [0.10, 0.06, 0.04, 0.03, 0.04, 0.08, 0.20, 0.45, 0.70, 0.85, 0.95, 1.05,
     1.20, 1.15, 1.00, 0.95, 1.00, 1.10, 1.20, 1.15, 0.95, 0.75, 0.50, 0.25]
)  # fmt: skip

# random streams: one per purpose so a knob only changes what it should
STREAM_WORLD = 0
STREAM_PLAN = 1
STREAM_LEGIT = 2
STREAM_FRAUD = 3
STREAM_BNPL = 4

_MAX_ROWS = 2_000_000_000

# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class FraudConfig(GeneratorConfig):
    """Parameters of one synthetic fraud data set.

    ``n_customers`` and ``n_terminals`` default to ``max(200, n_rows // 50)`` and
    ``max(200, n_rows // 100)`` (about 1.7 transactions per customer per day over 30
    days); after construction they hold the resolved values.
    """

    n_rows: int
    seed: int = 0
    start: str = "2026-01-01"
    days: int = 30
    n_customers: int | None = None
    n_terminals: int | None = None
    fraud_rate: float = 0.002
    new_fraud_pattern: bool = False
    amount_shift: float = 0.0
    new_merchant_segment: bool = False
    amount_shift_region: str | None = None
    drift_from_day: int = 0

    def __post_init__(self) -> None:
        self.check_int("n_rows", 1_000, _MAX_ROWS)
        self.check_int("seed", 0, 2**63 - 1)
        self.check_date("start")
        self.check_int("days", 1, 3_660)
        if self.n_customers is None:
            object.__setattr__(self, "n_customers", max(200, self.n_rows // 50))
        if self.n_terminals is None:
            object.__setattr__(self, "n_terminals", max(200, self.n_rows // 100))
        self.check_int("n_customers", 50, 100_000_000)
        self.check_int("n_terminals", 100, 100_000_000)
        self.check_float("fraud_rate", 0.001, 0.01)
        self.check_float("amount_shift", -0.5, 3.0)
        self.check_int("drift_from_day", 0, self.days - 1)
        if self.amount_shift_region is not None and self.amount_shift_region not in REGIONS:
            raise DataValidationError(
                f"FraudConfig.amount_shift_region must be one of {list(REGIONS)} or null, "
                f"got {self.amount_shift_region!r}"
            )
        for name in ("new_fraud_pattern", "new_merchant_segment"):
            if not isinstance(getattr(self, name), bool):
                raise DataValidationError(
                    f"FraudConfig.{name} must be true or false, got {getattr(self, name)!r}"
                )


def stream_rng(cfg: FraudConfig, *keys: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, *keys])
