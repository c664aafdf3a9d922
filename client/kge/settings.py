"""The federation's own run-config keys (everything that is not a KGE hyper-parameter).

The KGE hyper-parameters belong to :class:`client.kge.config.KGEConfig`; it ignores the keys of
the other owners (its ``KNOWN_NON_KGE_KEYS``, which include :data:`KNOWN_NON_KGE_KEYS` here) and
rejects any other unknown key, while :meth:`FederationSettings.from_run_config` reads only these
keys. Each key is declared once, on its field (:func:`client.kge.registry.key_field`); the whole
registry is :data:`client.kge.run_config.REGISTRY`, so a misspelt key fails loudly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from client.kge.aggregation import AGGREGATIONS, AggregationError, check_rule
from client.kge.registry import Key, coerce, key_field, keys_of
from simskip_core.errors import shown

__all__ = [
    "FEDERATION_KEYS",
    "KNOWN_NON_KGE_KEYS",
    "SETTINGS",
    "FederationSettings",
    "SettingsError",
]

#: dtypes entity rows may travel in.
TRANSFER_DTYPES = ("float32", "float16")

#: The training settings every federated KGE paper reports with the same budget.
SETTINGS = ("fede", "isolation", "collection")


class SettingsError(ValueError):
    """A federation run-config value is missing, of the wrong type or out of range."""


@dataclass(frozen=True)
class FederationSettings:
    """How the federation runs (kebab-case run-config keys in brackets).

    The validation schedule (``eval-every``, ``patience``, ``eval-protocol``) and the seed of
    the initial entity table (``seed``) are KGE keys, read from ``KGEConfig``.

    :param num_server_rounds: [num-server-rounds] maximum number of FedE rounds.
    :param setting: [setting] ``fede`` (per-row mean of shared entities), ``isolation`` (each
        client trains alone, same loop without averaging) or ``collection`` (all triples pooled
        and trained centrally; runs without Flower, see ``simskip-sim --setting collection``).
    :param fraction_train: [fraction-train] fraction of the registered clients sampled per round.
    :param min_clients: [min-clients] clients that must be connected before the handshake.
    :param transfer_dtype: [transfer-dtype] dtype of the entity rows on the wire: ``float16``
        (the default: half the bytes; rows are rounded to half precision in transit, training and
        aggregation stay float32/float64; on FB15k-237-Fed3 / TransE the validation MRR of rounds
        2-8 matched float32 to 3 decimals) or ``float32`` (exact).
    :param round_timeout: [round-timeout] seconds to wait for the replies of one exchange
        (a round's training, its validation, the final test); a client that has not answered
        by then is left out of that round (recorded as a ``timeout`` failure).
    :param min_clients_timeout: [min-clients-timeout] seconds to wait, at the handshake and at
        the start of every round, for ``min-clients`` registered clients to be connected; then
        the run stops with an error naming how many were connected.
    :param run_dir: [run-dir] the server's output folder; empty means "do not write"
        (the simskip-server / simskip-sim commands always set it, as an absolute path).
    :param client_output_root: [client-output-root] in simulation, the folder under which
        virtual client ``k`` writes its private outputs into ``<root>/<k>``; deployed clients
        take their output folder from node config instead.
    :param client_data_root: [client-data-root] in simulation, the folder holding one data
        folder per client, ``<root>/<partition-id>``; deployed clients take ``data-dir`` from
        node config instead.
    :param aggregation: [aggregation] how a shared entity row is combined over the parties holding
        it (and the SimSkip encoder weights over the parties): ``mean`` (FedE), ``median`` or
        ``trimmed-mean`` (:mod:`client.kge.aggregation`; rows with one or two holders get their mean).
    :param aggregation_trim: [aggregation-trim] fraction of a row's holders cut from each end by
        ``trimmed-mean`` (``floor(trim * holders)`` each side), in [0, 0.5).
    :param resume: [resume] continue the run in ``run-dir`` after its last checkpointed round
        (``server/checkpoint.py``); a missing, corrupt or mismatched checkpoint is an error,
        never a fresh start.
    """

    num_server_rounds: int = key_field(100, help="maximum number of FedE rounds (a budget)", model_defining=False)
    setting: str = key_field("fede", help="fede, isolation or collection", model_defining=True, choices=SETTINGS)
    fraction_train: float = key_field(
        1.0, help="fraction of the registered clients sampled per round", model_defining=True
    )
    min_clients: int = key_field(2, help="clients that must be connected before the handshake", model_defining=False)
    transfer_dtype: str = key_field(
        "float16", help="dtype of the entity rows on the wire", model_defining=True, choices=TRANSFER_DTYPES
    )
    round_timeout: float = key_field(
        3600.0, help="seconds to wait for the replies of one exchange", model_defining=False
    )
    run_dir: str = key_field(
        "",
        help="the server's output folder (simskip-sim / simskip-server set it; the ServerApp refuses it empty,"
        " run_federation called in-process then writes nothing)",
        model_defining=False,
    )
    client_output_root: str = key_field(
        "", help="simulation: virtual client k writes under <root>/<k>", model_defining=False
    )
    client_data_root: str = key_field(
        "", help="simulation: the folder of one data folder per client", model_defining=True
    )
    min_clients_timeout: float = key_field(
        600.0, help="seconds to wait for min-clients connected clients", model_defining=False
    )
    aggregation: str = key_field(
        "mean", help="per-row rule over a shared entity's holders", model_defining=True, choices=AGGREGATIONS
    )
    aggregation_trim: float = key_field(0.25, help="fraction cut from each end by trimmed-mean", model_defining=True)
    resume: bool = key_field(
        False, help="continue the run in run-dir after its last checkpointed round", model_defining=False
    )

    def __post_init__(self) -> None:
        if self.setting not in SETTINGS:
            raise SettingsError(f"setting must be one of {SETTINGS}, got {shown(self.setting)}")
        if self.num_server_rounds < 1:
            raise SettingsError(f"num-server-rounds must be >= 1, got {shown(self.num_server_rounds)}")
        if not 0.0 < self.fraction_train <= 1.0:
            raise SettingsError(f"fraction-train must be in (0, 1], got {shown(self.fraction_train)}")
        if self.min_clients < 1:
            raise SettingsError(f"min-clients must be >= 1, got {shown(self.min_clients)}")
        if self.transfer_dtype not in TRANSFER_DTYPES:
            raise SettingsError(f"transfer-dtype must be one of {TRANSFER_DTYPES}, got {shown(self.transfer_dtype)}")
        # "not > 0" rather than "<= 0": NaN fails too (found by tests/test_loader_fuzz.py)
        if not self.round_timeout > 0:
            raise SettingsError(f"round-timeout must be > 0, got {shown(self.round_timeout)}")
        if not self.min_clients_timeout > 0:
            raise SettingsError(f"min-clients-timeout must be > 0, got {shown(self.min_clients_timeout)}")
        try:
            check_rule(self.aggregation, self.aggregation_trim)
        except AggregationError as err:
            raise SettingsError(str(err)) from None
        if self.resume and not self.run_dir:
            raise SettingsError("resume = true needs run-dir (the folder of the run to continue)")

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> FederationSettings:
        """Read this class's keys from a Flower run config (other keys are ignored here).

        :raises SettingsError: when a value has the wrong type.
        """
        values: dict[str, Any] = {}
        for field in fields(cls):
            key = field.name.replace("_", "-")
            if key not in run_config:
                continue
            value = run_config[key]
            default = field.default
            # The value must have the field's type, as KGEConfig requires (the registry's one rule: an int
            # may be an integral float, a float an int). Converting instead accepted any type: bool("false")
            # is True, str(0) a path, int(inf) an OverflowError (found by tests/test_loader_fuzz.py).
            try:
                value = coerce(value, type(default))
            except (TypeError, OverflowError):
                raise SettingsError(
                    f"run-config key {key!r}: expected {type(default).__name__}, got {shown(value)}"
                ) from None
            values[field.name] = value
        return cls(**values)


#: The federation's keys of the registry (declared on :class:`FederationSettings`'s fields).
FEDERATION_KEYS: tuple[Key, ...] = keys_of(FederationSettings, "federation")

#: Run-config keys owned by the federation (this module), not by ``KGEConfig``.
KNOWN_NON_KGE_KEYS: frozenset[str] = frozenset(key.name for key in FEDERATION_KEYS)
