"""Seeded generator of realistic card transactions whose fraud labels come from a known model (the oracle).

The process, in the order it is generated:

- Customers (account creation spread over years before ``start``, a share opened during the period; home
  region, card type, credit limit) and merchants (onboarding, category, region). Latent, not columns: each
  customer's spend level (credit limits follow it) and activity; each merchant's popularity and fraud risk.
- Legitimate traffic: times from an hourly and weekly profile (quiet nights, busy Fridays and Saturdays),
  customers by activity, merchants mostly in the customer's home region, channel by category, lognormal
  amounts around the customer's spend level times the category's typical price; a share are follow-ups
  minutes after another purchase of the same customer (shopping trips).
- Compromised cards: bursts of a few transactions seconds to minutes apart, at any hour, mostly online,
  at riskier categories and merchants, often outside the home region, with unusually high amounts.
- Labels: every transaction gets ``oracle_probability = sigmoid(b0 + score)`` where ``score`` adds terms
  for velocity (gap since the customer's previous transaction, transactions in the hour before), an
  amount unusual for the customer, the category, the merchant's latent risk, night (00-05 UTC), a new
  account, the online channel, a merchant outside the home region and prepaid cards; ``b0`` is solved so
  the mean oracle equals ``fraud_rate``. ``is_fraud ~ Bernoulli(oracle_probability)``, so the oracle is
  the Bayes-optimal score. Bursts are not a hidden flag: they reach the oracle only through what they
  look like (velocity, amount, channel, merchant), which the feature pipeline can see too.
- Label arrival: ``label_timestamp`` is the event time plus a chargeback delay (lognormal, days to weeks)
  for fraud and a fixed maturity (7 days) for legitimate transactions. Consumers treat a label as known
  only when ``label_timestamp <= as_of``; label timestamps therefore often lie after the generated
  period (and may lie after today). Labels are inline in the transactions; ``split_labels`` separates them
  into a labels table, as a chargeback feed sends them, from transactions as the scoring service sees them.
- Drift (``DriftSpec``), on transactions at or after ``drift.start`` only: amounts inflate (a price
  level: amounts relative to the customer's inflated normal carry the same risk), a share of card-present
  transactions move online (more fraud, through the online term), and a new fraud pattern appears
  (daytime card-testing bursts of tiny amounts at digital-goods merchants, with its own oracle term).
  The oracle is the true probability of the drifted process. Everything before ``drift.start`` is
  identical, row for row, to the same config without drift.

The population and the base traffic have exactly ``n_transactions`` rows; the new fraud pattern adds its
bursts on top. Everything is vectorized numpy and deterministic for a given config (byte-identical frames).
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from flows.feature_store.ingestion import as_utc
from flows.fraud_data.schema import CARD_TYPES, CHANNELS, MAX_AMOUNT, MERCHANT_CATEGORIES, REGIONS
from model_store.atomic_files import write_atomically
from services.stream.windows import EventIndex

logger = logging.getLogger(__name__)

US_PER_S = 1_000_000
US_PER_HOUR = 3_600 * US_PER_S
US_PER_DAY = 24 * US_PER_HOUR
NIGHT_HOURS = (0, 1, 2, 3, 4, 5)  # the on-demand feature `is_night` uses the same UTC hours
AMOUNT_SIGMA = 0.55  # spread of log(amount) around a customer's normal for a category


@dataclass(frozen=True)
class CategoryProfile:
    """How a merchant category behaves: prices, channel mix, share of merchants and fraud exposure."""

    median_amount: float
    online_share: float
    merchant_share: float
    fraud_logit: float  # added to every transaction's fraud score
    burst_affinity: float  # how much compromised cards favour it


CATEGORY_PROFILES: dict[str, CategoryProfile] = {
    "grocery": CategoryProfile(40.0, 0.04, 0.20, -0.6, 0.2),
    "fuel": CategoryProfile(55.0, 0.01, 0.08, -0.3, 0.3),
    "restaurants": CategoryProfile(35.0, 0.08, 0.17, -0.4, 0.2),
    "fashion": CategoryProfile(85.0, 0.35, 0.11, 0.2, 1.0),
    "electronics": CategoryProfile(260.0, 0.45, 0.07, 0.7, 2.5),
    "travel": CategoryProfile(380.0, 0.65, 0.05, 0.6, 1.5),
    "digital_goods": CategoryProfile(18.0, 0.97, 0.08, 0.9, 3.0),
    "gaming": CategoryProfile(25.0, 0.90, 0.04, 0.7, 2.0),
    "health": CategoryProfile(60.0, 0.12, 0.08, -0.5, 0.2),
    "home": CategoryProfile(120.0, 0.25, 0.12, -0.1, 0.5),
}
CUSTOMER_REGION_SHARES = {
    "north": 0.22,
    "south": 0.22,
    "east": 0.20,
    "west": 0.20,
    "central": 0.14,
    "abroad": 0.02,
}
MERCHANT_REGION_SHARES = {
    "north": 0.20,
    "south": 0.20,
    "east": 0.19,
    "west": 0.19,
    "central": 0.14,
    "abroad": 0.08,
}
CARD_TYPE_SHARES = {"credit": 0.55, "debit": 0.38, "prepaid": 0.07}
CREDIT_LIMIT_PER_SPEND = {"credit": 2_500.0, "debit": 1_200.0, "prepaid": 300.0}
# Relative traffic by UTC hour (0..23) and by weekday (Monday first).
HOURLY_PROFILE = (
    0.20, 0.12, 0.08, 0.07, 0.08, 0.15, 0.35, 0.65, 0.90, 1.00, 1.05, 1.15,
    1.30, 1.20, 1.05, 1.05, 1.15, 1.30, 1.40, 1.30, 1.10, 0.90, 0.65, 0.40,
)  # fmt: skip
WEEKLY_PROFILE = (0.90, 0.92, 0.95, 1.00, 1.15, 1.20, 0.85)


@dataclass(frozen=True)
class OracleWeights:
    """Logit terms of the latent fraud model; each maps to something the features can see."""

    velocity_gap: float = 3.0  # times exp(-gap / velocity_gap_scale_s)
    velocity_gap_scale_s: float = 300.0
    velocity_count_1h: float = 0.3  # per earlier transaction in the hour, capped at 6
    unusual_amount: float = 1.0  # per standard deviation of log(amount) above 1 over the customer's normal
    night: float = 1.1
    new_account: float = 2.0  # times exp(-account age / new_account_scale_days)
    new_account_scale_days: float = 30.0
    online: float = 0.9
    foreign_merchant: float = 1.1
    prepaid: float = 0.5
    card_testing: float = 4.5  # drift's new pattern: tiny rapid digital-goods purchases


DEFAULT_START = pd.Timestamp("2026-01-01", tz="UTC")


@dataclass(frozen=True)
class DriftSpec:
    """What changes from ``start`` on (transactions at or after it)."""

    start: pd.Timestamp
    amount_inflation: float = 1.0
    channel_shift: float = 0.0
    new_fraud_pattern: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", _utc_timestamp(self.start, "drift.start"))
        if not self.amount_inflation > 0:
            raise ValueError(f"drift.amount_inflation must be > 0, got {self.amount_inflation}")
        if not 0.0 <= self.channel_shift <= 1.0:
            raise ValueError(f"drift.channel_shift must be within [0, 1], got {self.channel_shift}")


@dataclass(frozen=True)
class GeneratorConfig:
    """Size, period, prevalence, seed and behaviour knobs of one generated data set."""

    n_transactions: int = 1_000_000
    n_customers: int = 50_000
    n_merchants: int = 5_000
    start: pd.Timestamp = DEFAULT_START
    days: int = 90
    fraud_rate: float = 0.01
    seed: int = 42
    drift: DriftSpec | None = None
    new_account_share: float = 0.04  # customers who open their account during the period
    account_history_years: float = 8.0  # oldest accounts and merchants
    burst_share: float = 0.006  # share of transactions made by compromised cards in bursts
    session_share: float = 0.08  # share of legitimate transactions made minutes after another one
    risky_merchant_share: float = 0.03
    home_region_share: float = 0.80  # legitimate purchases at merchants in the customer's region
    card_testing_share: float = 0.004  # drift's new pattern, as a share of the drifted transactions
    legit_label_delay_days: float = 7.0
    chargeback_delay_median_days: float = 12.0
    chargeback_delay_max_days: float = 60.0
    oracle: OracleWeights = OracleWeights()

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", _utc_timestamp(self.start, "start"))
        for name in ("n_transactions", "n_customers", "n_merchants", "days"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 < self.fraud_rate < 0.5:
            raise ValueError(f"fraud_rate must be within (0, 0.5), got {self.fraud_rate}")
        for name in ("new_account_share", "burst_share", "session_share", "risky_merchant_share",
                     "home_region_share", "card_testing_share"):  # fmt: skip
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be within [0, 1), got {getattr(self, name)}")
        if self.burst_share >= 0.5:
            raise ValueError(f"burst_share {self.burst_share} leaves too few legitimate transactions")
        if not 0 < self.chargeback_delay_median_days <= self.chargeback_delay_max_days:
            raise ValueError("chargeback_delay_median_days must be > 0 and <= chargeback_delay_max_days")
        if self.legit_label_delay_days < 0:
            raise ValueError(f"legit_label_delay_days must be >= 0, got {self.legit_label_delay_days}")

    @property
    def end(self) -> pd.Timestamp:
        return self.start + pd.Timedelta(days=self.days)


@dataclass
class RawData:
    """The raw tables, in the columns and dtypes of the raw schema (docs/architecture.md)."""

    customers: pd.DataFrame
    merchants: pd.DataFrame
    transactions: pd.DataFrame  # sorted by event_timestamp
    labels: pd.DataFrame | None = (
        None  # labels sent on their own (split_labels); None: inline in transactions
    )


@dataclass
class Population:
    """Customers and merchants with their latent attributes, as arrays indexed by id - 1."""

    account_created_us: np.ndarray
    home_region: np.ndarray  # codes into REGIONS
    card_type: np.ndarray  # codes into CARD_TYPES
    credit_limit: np.ndarray
    spend_level: np.ndarray  # latent
    activity: np.ndarray  # latent, relative transaction rate
    onboarded_us: np.ndarray
    merchant_category: np.ndarray  # codes into MERCHANT_CATEGORIES
    merchant_region: np.ndarray  # codes into REGIONS
    popularity: np.ndarray  # latent
    merchant_risk: np.ndarray  # latent logit term


@dataclass
class Transactions:
    """Generated transactions as parallel arrays (customer and merchant are 0-based indices)."""

    customer: np.ndarray
    merchant: np.ndarray
    time_us: np.ndarray
    amount: np.ndarray
    channel: np.ndarray  # codes into CHANNELS
    normal_amount: np.ndarray  # the customer's normal amount for this category (latent)
    label_draw: np.ndarray  # uniform draw that decides the label against the oracle
    chargeback_days: np.ndarray  # label delay if the transaction turns out fraudulent
    card_testing_phase: np.ndarray  # bool: the drifted process with the new pattern applies

    def concat(self, other: Transactions) -> Transactions:
        return Transactions(
            **{name: np.concatenate([getattr(self, name), getattr(other, name)]) for name in self.__dict__}
        )

    def __len__(self) -> int:
        return len(self.time_us)


def generate_raw_data(config: GeneratorConfig, part: int = 0, parts: int = 1) -> RawData:
    """Generate customers, merchants and labelled transactions for ``config`` (see the module docstring).

    With ``parts`` above 1, only slice ``part`` (from 0) of ``parts`` consecutive, equal slices of the period,
    with its share of ``n_transactions``: a set too large for one process is generated slice by slice, each
    holding only its own traffic. Every slice draws the same population from ``config.seed``, so a card's
    habits and hidden risk are the same in all of them, and its traffic from seeds of its own; transaction ids
    carry the slice (``s<seed>p<part>-``). Two things do not cross a slice's start: the oracle's velocity terms
    (a customer's previous transaction in the slice before) and its intercept (solved per slice, on the same
    process, so within sampling noise of each other).
    """
    _check_vocabulary()
    population_stream, *streams = np.random.SeedSequence(config.seed).spawn(5)
    id_prefix = f"s{config.seed}-"
    population = generate_population(config, np.random.default_rng(population_stream))
    if parts != 1:
        config = _slice_of_period(config, part, parts)
        streams = np.random.SeedSequence(config.seed, spawn_key=(5, part)).spawn(4)
        id_prefix = f"s{config.seed}p{part}-"
    rng_traffic, rng_bursts, rng_labels, rng_drift = (np.random.default_rng(s) for s in streams)
    n_burst_rows_target = round(config.burst_share * config.n_transactions)
    bursts = generate_fraud_bursts(config, population, rng_bursts, n_burst_rows_target)
    legit = generate_legit_traffic(config, population, rng_traffic, config.n_transactions - len(bursts))
    base = legit.concat(bursts)
    _draw_label_randomness(config, base, rng_labels)

    # The intercept is solved on the undrifted process, so drift changes nothing before its start.
    base_score = score_transactions(config, population, base)
    intercept = solve_intercept(base_score, config.fraud_rate)
    txns, score = base, base_score
    if config.drift is not None:
        txns = apply_drift(config, config.drift, population, base, rng_drift)
        score = score_transactions(config, population, txns)
    oracle = _sigmoid(intercept + score)
    logger.debug("oracle intercept %.4f, %d transactions", intercept, len(txns))
    return RawData(
        customers=build_customers_frame(population),
        merchants=build_merchants_frame(population),
        transactions=build_transactions_frame(config, txns, oracle, id_prefix),
    )


def _slice_of_period(config: GeneratorConfig, part: int, parts: int) -> GeneratorConfig:
    """The config of slice ``part`` of ``parts``: its days of the period and its share of the transactions."""
    if not 0 <= part < parts:
        raise ValueError(f"part must be within [0, parts), got part {part} of {parts}")
    if config.days % parts or parts > config.n_transactions:
        raise ValueError(
            f"parts {parts} must divide days ({config.days}) and be at most n_transactions "
            f"({config.n_transactions})"
        )
    days = config.days // parts
    n, extra = divmod(config.n_transactions, parts)
    return replace(
        config,
        n_transactions=n + (part < extra),
        start=config.start + pd.Timedelta(days=days * part),
        days=days,
    )


def generate_population(config: GeneratorConfig, rng: np.random.Generator) -> Population:
    """Customers and merchants with profile attributes and the latent traits that drive spending and fraud."""
    t0, t_end = _to_us(config.start), _to_us(config.end)
    history_us = int(config.account_history_years * 365.25 * US_PER_DAY)
    n_c, n_m = config.n_customers, config.n_merchants

    # Account ages skew young (more recent accounts), capped at the history; some open during the period.
    age_us = np.minimum(rng.gamma(1.5, history_us / 5.0, n_c), history_us).astype(np.int64)
    created = t0 - US_PER_HOUR - age_us
    is_new = rng.random(n_c) < config.new_account_share
    created[is_new] = t0 + (rng.random(is_new.sum()) * (t_end - t0 - US_PER_DAY)).astype(np.int64)
    created = created // US_PER_S * US_PER_S
    home_region = _draw_codes(rng, REGIONS, CUSTOMER_REGION_SHARES, n_c)
    card_type = _draw_codes(rng, CARD_TYPES, CARD_TYPE_SHARES, n_c)
    spend = rng.lognormal(-0.125, 0.5, n_c)
    per_spend = np.array([CREDIT_LIMIT_PER_SPEND[c] for c in CARD_TYPES])[card_type]
    # Limits track the latent spend level closely: they are what lets a model judge "unusual for them".
    credit_limit = np.maximum(np.round(spend * per_spend * rng.lognormal(0.0, 0.12, n_c), -2), 100.0)
    activity = rng.gamma(1.3, 1.0, n_c)

    onboarded = t0 - US_PER_DAY - (rng.random(n_m) * history_us).astype(np.int64)
    onboarded = onboarded // US_PER_S * US_PER_S
    shares = {c: CATEGORY_PROFILES[c].merchant_share for c in MERCHANT_CATEGORIES}
    category = _draw_codes(rng, MERCHANT_CATEGORIES, shares, n_m)
    merchant_region = _draw_codes(rng, REGIONS, MERCHANT_REGION_SHARES, n_m)
    popularity = rng.lognormal(0.0, 0.8, n_m)
    # Risk is concentrated in a few merchants (more often abroad) so their fraud rate stands out in labels.
    abroad = merchant_region == REGIONS.index("abroad")
    risky = rng.random(n_m) < config.risky_merchant_share * np.where(abroad, 2.5, 1.0)
    merchant_risk = np.where(risky, rng.uniform(1.0, 2.0, n_m), 0.0)
    return Population(
        account_created_us=created,
        home_region=home_region,
        card_type=card_type,
        credit_limit=credit_limit,
        spend_level=spend,
        activity=activity,
        onboarded_us=onboarded,
        merchant_category=category,
        merchant_region=merchant_region,
        popularity=popularity,
        merchant_risk=merchant_risk,
    )


def generate_legit_traffic(
    config: GeneratorConfig, population: Population, rng: np.random.Generator, n_rows: int
) -> Transactions:
    """Everyday purchases with daily and weekly seasonality, plus follow-ups minutes after a purchase."""
    t0, t_end = _to_us(config.start), _to_us(config.end)
    n_followups = round(config.session_share * n_rows)
    n_independent = n_rows - n_followups

    times = _draw_seasonal_times(rng, t0, t_end, n_independent)
    customers = _draw_weighted(rng, population.activity, n_independent)
    customers, times = _ensure_account_exists(rng, population, customers, times, t_end)

    parents = rng.integers(0, n_independent, n_followups)
    gap = (60 * US_PER_S + rng.exponential(20 * 60 * US_PER_S, n_followups)).astype(np.int64)
    followup_times = times[parents] + gap
    late = followup_times >= t_end
    followup_times[late] = times[parents][late] - gap[late]  # keep the trip inside the period
    followup_customers = customers[parents]
    followup_times = np.maximum(followup_times, population.account_created_us[followup_customers])

    customers = np.concatenate([customers, followup_customers])
    times = np.concatenate([times, followup_times])
    merchants = _draw_merchants_near_home(rng, population, customers, config.home_region_share)
    category = population.merchant_category[merchants]
    online_share = np.array([CATEGORY_PROFILES[c].online_share for c in MERCHANT_CATEGORIES])[category]
    abroad = population.merchant_region[merchants] == REGIONS.index("abroad")
    online_share = np.where(abroad, np.maximum(online_share, 0.7), online_share)
    channel = _draw_channels(rng, online_share)
    normal = _normal_amount(population, customers, merchants)
    amount = normal * rng.lognormal(0.0, AMOUNT_SIGMA, n_rows)
    return _transactions(customers, merchants, times, amount, channel, normal)


def generate_fraud_bursts(
    config: GeneratorConfig, population: Population, rng: np.random.Generator, n_rows_target: int
) -> Transactions:
    """Compromised cards: a few transactions minutes apart, any hour, risky merchants, high amounts."""
    t0, t_end = _to_us(config.start), _to_us(config.end)
    n_bursts = max(1, round(n_rows_target / 5)) if n_rows_target > 0 else 0
    lengths = 2 + rng.poisson(3.0, n_bursts)
    n_rows = int(lengths.sum())
    # Fraudsters keep no office hours: uniform over the day, so night is over-represented.
    starts = t0 + (rng.random(n_bursts) * max(t_end - t0 - 2 * US_PER_HOUR, US_PER_HOUR)).astype(np.int64)
    customers = rng.integers(0, config.n_customers, n_bursts)
    customers, starts = _ensure_account_exists(rng, population, customers, starts, t_end)

    burst_of_row = np.repeat(np.arange(n_bursts), lengths)
    gaps = (15 * US_PER_S + rng.exponential(100 * US_PER_S, n_rows)).astype(np.int64)
    first_row = np.repeat(np.cumsum(lengths) - lengths, lengths)
    gaps[np.arange(n_rows) == first_row] = 0
    offsets = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[np.cumsum(lengths) - lengths], lengths)
    times = np.minimum(starts[burst_of_row] + offsets, t_end - 1)
    customers = customers[burst_of_row]

    category_affinity = np.array([CATEGORY_PROFILES[c].burst_affinity for c in MERCHANT_CATEGORIES])
    abroad = population.merchant_region == REGIONS.index("abroad")
    weights = (
        np.sqrt(population.popularity)
        * category_affinity[population.merchant_category]
        * np.where(population.merchant_risk > 0, 6.0, 1.0)
        * np.where(abroad, 3.0, 1.0)
    )
    merchants = _draw_weighted(rng, weights, n_rows)
    channel = _draw_channels(rng, np.full(n_rows, 0.75))
    normal = _normal_amount(population, customers, merchants)
    amount = normal * rng.lognormal(1.0, 0.7, n_rows)
    return _transactions(customers, merchants, times, amount, channel, normal)


def generate_card_testing(
    config: GeneratorConfig,
    drift: DriftSpec,
    population: Population,
    rng: np.random.Generator,
    n_rows_target: int,
) -> Transactions:
    """Drift's new pattern: daytime bursts of tiny online purchases at digital-goods merchants."""
    t_end = _to_us(config.end)
    window_start = max(_to_us(drift.start), _to_us(config.start))
    digital = np.flatnonzero(population.merchant_category == MERCHANT_CATEGORIES.index("digital_goods"))
    n_bursts = max(1, round(n_rows_target / 7)) if n_rows_target > 0 else 0
    if n_bursts == 0 or t_end - window_start < US_PER_DAY:
        return _transactions(*(np.empty(0, dtype=dtype) for dtype in (int, int, np.int64, float, int, float)))
    if digital.size == 0:
        raise ValueError(
            "drift.new_fraud_pattern needs at least one digital_goods merchant: raise n_merchants"
        )
    lengths = 3 + rng.poisson(4.0, n_bursts)
    n_rows = int(lengths.sum())
    days = rng.integers(0, (t_end - window_start) // US_PER_DAY, n_bursts)
    day_start = (window_start // US_PER_DAY + days) * US_PER_DAY
    starts = day_start + (rng.uniform(9, 17, n_bursts) * US_PER_HOUR).astype(np.int64)
    # A burst drawn before the drift starts (on its first, partial day) moves to the next day.
    starts = np.where(starts < window_start, starts + US_PER_DAY, starts)
    customers = rng.integers(0, config.n_customers, n_bursts)
    customers, starts = _ensure_account_exists(rng, population, customers, starts, t_end)

    burst_of_row = np.repeat(np.arange(n_bursts), lengths)
    gaps = (10 * US_PER_S + rng.exponential(40 * US_PER_S, n_rows)).astype(np.int64)
    first_row = np.repeat(np.cumsum(lengths) - lengths, lengths)
    gaps[np.arange(n_rows) == first_row] = 0
    offsets = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[np.cumsum(lengths) - lengths], lengths)
    times = np.minimum(starts[burst_of_row] + offsets, t_end - 1)
    customers = customers[burst_of_row]
    merchants = digital[_draw_weighted(rng, population.popularity[digital], n_rows)]
    amount = rng.uniform(0.5, 4.99, n_rows)
    channel = np.full(n_rows, CHANNELS.index("online"))
    txns = _transactions(
        customers, merchants, times, amount, channel, _normal_amount(population, customers, merchants)
    )
    txns.card_testing_phase[:] = True
    return txns


def apply_drift(
    config: GeneratorConfig,
    drift: DriftSpec,
    population: Population,
    base: Transactions,
    rng: np.random.Generator,
) -> Transactions:
    """The drifted process: inflation, channel shift and the new pattern, on rows at or after ``drift.start``."""
    after = base.time_us >= _to_us(drift.start)
    shift_draw = rng.random(len(base))
    amount = base.amount.copy()
    normal = base.normal_amount.copy()
    amount[after] *= drift.amount_inflation
    normal[after] *= drift.amount_inflation
    channel = base.channel.copy()
    card_present = channel != CHANNELS.index("online")
    channel[after & card_present & (shift_draw < drift.channel_shift)] = CHANNELS.index("online")
    drifted = Transactions(
        customer=base.customer,
        merchant=base.merchant,
        time_us=base.time_us,
        amount=_round_amount(amount),
        channel=channel,
        normal_amount=normal,
        label_draw=base.label_draw,
        chargeback_days=base.chargeback_days,
        card_testing_phase=after & drift.new_fraud_pattern,
    )
    if not drift.new_fraud_pattern:
        return drifted
    testing = generate_card_testing(
        config, drift, population, rng, round(config.card_testing_share * after.sum())
    )
    _draw_label_randomness(config, testing, rng)
    return drifted.concat(testing)


def score_transactions(config: GeneratorConfig, population: Population, txns: Transactions) -> np.ndarray:
    """The oracle's logit without its intercept: a sum of terms the feature pipeline can observe."""
    w = config.oracle
    gap_s, count_1h = compute_velocity(txns.customer, txns.time_us)
    hour = (txns.time_us // US_PER_HOUR) % 24
    age_days = (txns.time_us - population.account_created_us[txns.customer]) / US_PER_DAY
    z = (np.log(txns.amount) - np.log(txns.normal_amount)) / AMOUNT_SIGMA
    category = population.merchant_category[txns.merchant]
    category_logit = np.array([CATEGORY_PROFILES[c].fraud_logit for c in MERCHANT_CATEGORIES])
    online = txns.channel == CHANNELS.index("online")
    foreign = population.merchant_region[txns.merchant] != population.home_region[txns.customer]
    prepaid = population.card_type[txns.customer] == CARD_TYPES.index("prepaid")
    card_testing = (
        txns.card_testing_phase
        & (category == MERCHANT_CATEGORIES.index("digital_goods"))
        & (txns.amount < 5.0)
        & (gap_s < 300.0)
    )
    return (
        w.velocity_gap * np.exp(-gap_s / w.velocity_gap_scale_s)
        + w.velocity_count_1h * np.minimum(count_1h, 6)
        + w.unusual_amount * np.clip(z - 1.0, 0.0, 4.0)
        + w.night * np.isin(hour, NIGHT_HOURS)
        + w.new_account * np.exp(-np.maximum(age_days, 0.0) / w.new_account_scale_days)
        + w.online * online
        + w.foreign_merchant * foreign
        + w.prepaid * prepaid
        + w.card_testing * card_testing
        + category_logit[category]
        + population.merchant_risk[txns.merchant]
    )


def compute_velocity(customer: np.ndarray, time_us: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Seconds since the customer's previous transaction (inf if none) and their transactions in the hour before."""
    n = len(time_us)
    order = np.lexsort((time_us, customer))
    cust, t = customer[order], time_us[order]
    same = cust[1:] == cust[:-1]
    gap = np.full(n, np.inf)
    gap[1:][same] = (t[1:] - t[:-1])[same] / US_PER_S
    # Earlier transactions of the customer (in time order, ties in generation order) at most an hour
    # before, at millisecond resolution: its rank among its own transactions minus those further back.
    codes, uniques = pd.factorize(cust)
    t_ms = t // 1000
    index = EventIndex(codes, t_ms, len(uniques))
    # The arrays are sorted by (customer, time) already, so the index's order is theirs.
    count = (np.arange(n) - index.first(codes)) - index.count_upto(codes, t_ms - 3_600_001)
    gap_out, count_out = np.empty(n), np.empty(n, dtype=np.int64)
    gap_out[order], count_out[order] = gap, count
    return gap_out, count_out


def solve_intercept(score: np.ndarray, target_rate: float) -> float:
    """The intercept b0 with mean(sigmoid(b0 + score)) == target_rate (Newton's method on a monotone function)."""
    b0 = float(np.log(target_rate / (1 - target_rate)) - np.median(score))
    for _ in range(100):
        p = _sigmoid(b0 + score)
        excess = p.mean() - target_rate
        if abs(excess) < 1e-10:
            break
        b0 -= excess / max(float((p * (1 - p)).mean()), 1e-12)
    return b0


def build_customers_frame(population: Population) -> pd.DataFrame:
    """The customers table of the raw schema."""
    n = len(population.account_created_us)
    return pd.DataFrame(
        {
            "customer_id": np.arange(1, n + 1, dtype=np.int64),
            "account_created_at": _timestamps(population.account_created_us),
            "home_region": _labels(REGIONS, population.home_region),
            "card_type": _labels(CARD_TYPES, population.card_type),
            "credit_limit": population.credit_limit.astype(np.float64),
        }
    )


def build_merchants_frame(population: Population) -> pd.DataFrame:
    """The merchants table of the raw schema."""
    n = len(population.onboarded_us)
    return pd.DataFrame(
        {
            "merchant_id": np.arange(1, n + 1, dtype=np.int64),
            "onboarded_at": _timestamps(population.onboarded_us),
            "merchant_category": _labels(MERCHANT_CATEGORIES, population.merchant_category),
            "merchant_region": _labels(REGIONS, population.merchant_region),
        }
    )


def build_transactions_frame(
    config: GeneratorConfig, txns: Transactions, oracle: np.ndarray, id_prefix: str
) -> pd.DataFrame:
    """The transactions table of the raw schema, sorted by event time, with labels drawn from the oracle."""
    is_fraud = (txns.label_draw < oracle).astype(np.int64)
    delay_days = np.where(is_fraud == 1, txns.chargeback_days, config.legit_label_delay_days)
    label_us = txns.time_us + (delay_days * US_PER_DAY).astype(np.int64)
    order = np.lexsort((np.arange(len(txns)), txns.time_us))  # ties keep generation order
    n = len(order)
    return pd.DataFrame(
        {
            "transaction_id": np.array([f"{id_prefix}{i:09d}" for i in range(n)], dtype=object),
            "event_timestamp": _timestamps(txns.time_us[order]),
            "customer_id": txns.customer[order].astype(np.int64) + 1,
            "merchant_id": txns.merchant[order].astype(np.int64) + 1,
            "amount": txns.amount[order],
            "channel": _labels(CHANNELS, txns.channel[order]),
            "is_fraud": is_fraud[order],
            "label_timestamp": _timestamps(label_us[order]),
            "oracle_probability": oracle[order].astype(np.float64),
        }
    )


def split_labels(transactions: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Transactions as the scoring service sees them (``is_fraud`` and ``label_timestamp`` null), and their labels
    as a chargeback feed sends them, in order of arrival (``transaction_id``, ``is_fraud``, ``label_timestamp``).

    Generated labels often arrive after the generated period: a feed at time ``t`` sends the labels that had
    arrived by then, ``labels[labels["label_timestamp"] <= t]`` (a label in the future is quarantined).
    """
    labelled = transactions["is_fraud"].notna() & transactions["label_timestamp"].notna()
    labels = transactions.loc[labelled, ["transaction_id", "is_fraud", "label_timestamp"]]
    labels = labels.astype({"is_fraud": "int64"}).sort_values("label_timestamp", kind="stable")
    unlabelled = transactions.assign(
        is_fraud=pd.array([pd.NA] * len(transactions), dtype="Int64"),
        label_timestamp=pd.Series(
            pd.NaT, index=transactions.index, dtype=transactions["label_timestamp"].dtype
        ),
    )
    return unlabelled, labels.reset_index(drop=True)


def write_raw_data(data: RawData, raw_dir: Path, batch_name: str) -> list[Path]:
    """Write customers.parquet and merchants.parquet (overwritten), transactions/<batch_name>.parquet and, when
    ``data.labels`` is set, labels/<batch_name>.parquet."""
    _check_file_name(batch_name, "batch_name")
    raw_dir = Path(raw_dir)
    targets = [
        (data.customers, raw_dir / "customers.parquet"),
        (data.merchants, raw_dir / "merchants.parquet"),
        (data.transactions, raw_dir / "transactions" / f"{batch_name}.parquet"),
    ]
    if data.labels is not None:
        targets.append((data.labels, raw_dir / "labels" / f"{batch_name}.parquet"))
    for frame, path in targets:
        _write_parquet(frame, path)
    return [path for _, path in targets]


def write_labels(labels: pd.DataFrame, raw_dir: Path, name: str) -> Path:
    """Write a labels file, labels/<name>.parquet, as a chargeback feed would drop it in the landing zone."""
    _check_file_name(name, "name")
    path = Path(raw_dir) / "labels" / f"{name}.parquet"
    _write_parquet(labels, path)
    return path


def _check_file_name(name: str, field_name: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._=-]*", name):
        raise ValueError(f"{field_name} {name!r} must be a plain file name (letters, digits, . _ = -)")


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    # Whoever watches the landing zone never reads half a file.
    write_atomically(path, lambda partial: frame.to_parquet(partial, index=False))


def _check_vocabulary() -> None:
    unknown = set(MERCHANT_CATEGORIES) - CATEGORY_PROFILES.keys()
    unknown |= set(REGIONS) - (CUSTOMER_REGION_SHARES.keys() & MERCHANT_REGION_SHARES.keys())
    unknown |= set(CARD_TYPES) - CARD_TYPE_SHARES.keys()
    if (
        unknown
        or "abroad" not in REGIONS
        or "online" not in CHANNELS
        or "digital_goods" not in MERCHANT_CATEGORIES
    ):
        raise ValueError(f"schema.py vocabulary the generator has no profile for: {sorted(unknown)}")


def _draw_label_randomness(config: GeneratorConfig, txns: Transactions, rng: np.random.Generator) -> None:
    n = len(txns)
    txns.label_draw[:] = rng.random(n)
    delay = rng.lognormal(np.log(config.chargeback_delay_median_days), 0.6, n)
    txns.chargeback_days[:] = np.clip(delay, 1.0, config.chargeback_delay_max_days)


def _transactions(
    customers: np.ndarray,
    merchants: np.ndarray,
    times: np.ndarray,
    amount: np.ndarray,
    channel: np.ndarray,
    normal: np.ndarray,
) -> Transactions:
    n = len(times)
    return Transactions(
        customer=customers.astype(np.int64),
        merchant=merchants.astype(np.int64),
        time_us=times.astype(np.int64),
        amount=_round_amount(amount),
        channel=channel.astype(np.int64),
        normal_amount=normal.astype(np.float64),
        label_draw=np.zeros(n),
        chargeback_days=np.zeros(n),
        card_testing_phase=np.zeros(n, dtype=bool),
    )


def _draw_seasonal_times(rng: np.random.Generator, t0: int, t_end: int, n: int) -> np.ndarray:
    """Times following the hourly and weekly profiles (by UTC hour and weekday of each hour slot)."""
    slot_starts = np.arange(t0, t_end, US_PER_HOUR, dtype=np.int64)
    hours = (slot_starts // US_PER_HOUR) % 24
    weekdays = (slot_starts // US_PER_DAY + 3) % 7  # 1970-01-01 was a Thursday
    weights = np.array(HOURLY_PROFILE)[hours] * np.array(WEEKLY_PROFILE)[weekdays]
    slots = _draw_weighted(rng, weights, n)
    slot_len = np.minimum(US_PER_HOUR, t_end - slot_starts[slots])
    return slot_starts[slots] + (rng.random(n) * slot_len).astype(np.int64)


def _ensure_account_exists(
    rng: np.random.Generator, population: Population, customers: np.ndarray, times: np.ndarray, t_end: int
) -> tuple[np.ndarray, np.ndarray]:
    """Redraw customers whose account opens after the transaction; move the few left after it opens."""
    created = population.account_created_us
    customers, times = customers.copy(), times.copy()
    for _ in range(5):
        invalid = np.flatnonzero(created[customers] > times)
        if invalid.size == 0:
            return customers, times
        customers[invalid] = _draw_weighted(rng, population.activity, invalid.size)
    invalid = np.flatnonzero(created[customers] > times)
    unopened = invalid[created[customers[invalid]] >= t_end]
    if unopened.size:
        # Only in a slice of the period: an account that opens after the slice cannot stand in even moved.
        open_by_end = np.flatnonzero(created < t_end)
        customers[unopened] = open_by_end[
            _draw_weighted(rng, population.activity[open_by_end], unopened.size)
        ]
        invalid = np.flatnonzero(created[customers] > times)
    # Each is moved to after its account opens, which is after its time and before the period's end.
    opened = created[customers[invalid]]
    times[invalid] = opened + (rng.random(invalid.size) * (t_end - opened)).astype(np.int64)
    return customers, times


def _draw_merchants_near_home(
    rng: np.random.Generator, population: Population, customers: np.ndarray, home_share: float
) -> np.ndarray:
    """Mostly a merchant in the customer's home region (by popularity), otherwise any merchant."""
    n = len(customers)
    merchants = _draw_weighted(rng, population.popularity, n)
    at_home = rng.random(n) < home_share
    home = population.home_region[customers]
    for region in range(len(REGIONS)):
        local = np.flatnonzero(population.merchant_region == region)
        rows = np.flatnonzero(at_home & (home == region))
        if local.size and rows.size:
            merchants[rows] = local[_draw_weighted(rng, population.popularity[local], rows.size)]
    return merchants


def _draw_channels(rng: np.random.Generator, online_share: np.ndarray) -> np.ndarray:
    draw = rng.random(len(online_share))
    card_present = np.where(draw < online_share + (1 - online_share) * 0.6, "contactless", "chip")
    codes = np.where(card_present == "contactless", CHANNELS.index("contactless"), CHANNELS.index("chip"))
    return np.where(draw < online_share, CHANNELS.index("online"), codes)


def _normal_amount(population: Population, customers: np.ndarray, merchants: np.ndarray) -> np.ndarray:
    median = np.array([CATEGORY_PROFILES[c].median_amount for c in MERCHANT_CATEGORIES])
    return median[population.merchant_category[merchants]] * population.spend_level[customers]


def _draw_weighted(rng: np.random.Generator, weights: np.ndarray, n: int) -> np.ndarray:
    cdf = np.cumsum(weights, dtype=np.float64)
    return np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right"), len(cdf) - 1)


def _draw_codes(
    rng: np.random.Generator, names: Sequence[str], shares: dict[str, float], n: int
) -> np.ndarray:
    return _draw_weighted(rng, np.array([shares[name] for name in names]), n)


def _round_amount(amount: np.ndarray) -> np.ndarray:
    return np.round(np.clip(amount, 0.5, MAX_AMOUNT), 2)


def _labels(names: Sequence[str], codes: np.ndarray) -> np.ndarray:
    return np.asarray(names, dtype=object)[codes]


def _timestamps(us: np.ndarray) -> pd.Series:
    return pd.Series(us.astype("datetime64[us]")).dt.tz_localize("UTC")


def _to_us(ts: pd.Timestamp) -> int:
    return ts.value // 1000  # .value is nanoseconds whatever the unit


def _sigmoid(x: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _utc_timestamp(value: object, field_name: str) -> pd.Timestamp:
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{field_name} must be a timestamp, got {value!r}") from exc
    if ts.tzinfo is None:
        raise ValueError(f"{field_name} must be timezone-aware (UTC), got {value!r}")
    return ts.tz_convert("UTC")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = GeneratorConfig()
    parser = argparse.ArgumentParser(description="Generate raw card transactions with known fraud labels.")
    parser.add_argument("--raw-dir", type=Path, help="landing zone (default: the settings' raw_dir)")
    parser.add_argument("--batch-name", help="transactions file name (default: <start date>_s<seed>)")
    parser.add_argument("--transactions", type=int, default=defaults.n_transactions)
    parser.add_argument("--customers", type=int, default=defaults.n_customers)
    parser.add_argument("--merchants", type=int, default=defaults.n_merchants)
    parser.add_argument("--start", default=defaults.start.isoformat(), help="ISO time, UTC if no offset")
    parser.add_argument("--days", type=int, default=defaults.days)
    parser.add_argument("--fraud-rate", type=float, default=defaults.fraud_rate)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--drift-start", help="ISO time from which drift applies (UTC if no offset)")
    parser.add_argument("--amount-inflation", type=float, default=1.0)
    parser.add_argument("--channel-shift", type=float, default=0.0)
    parser.add_argument("--new-fraud-pattern", action="store_true")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> GeneratorConfig:
    """The generator config a command line asks for."""
    drift = None
    if args.drift_start:
        drift = DriftSpec(
            start=as_utc(args.drift_start),
            amount_inflation=args.amount_inflation,
            channel_shift=args.channel_shift,
            new_fraud_pattern=args.new_fraud_pattern,
        )
    elif args.amount_inflation != 1.0 or args.channel_shift or args.new_fraud_pattern:
        raise ValueError("--amount-inflation, --channel-shift and --new-fraud-pattern need --drift-start")
    return GeneratorConfig(
        n_transactions=args.transactions,
        n_customers=args.customers,
        n_merchants=args.merchants,
        start=as_utc(args.start),
        days=args.days,
        fraud_rate=args.fraud_rate,
        seed=args.seed,
        drift=drift,
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    if args.raw_dir is None:
        from model_store.settings import get_settings

        args.raw_dir = get_settings().raw_dir
    data = generate_raw_data(config)
    batch_name = args.batch_name or f"{config.start:%Y-%m-%d}_s{config.seed}"
    for path in write_raw_data(data, args.raw_dir, batch_name):
        print(path)
    txns = data.transactions
    print(
        f"{len(txns):,} transactions, {len(data.customers):,} customers, {len(data.merchants):,} merchants, "
        f"fraud rate {txns['is_fraud'].mean():.4f} (oracle mean {txns['oracle_probability'].mean():.4f})"
    )


if __name__ == "__main__":
    main()
