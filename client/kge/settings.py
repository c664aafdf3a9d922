"""The federation's own run-config keys (everything that is not a KGE hyper-parameter).

The KGE hyper-parameters belong to :class:`client.kge.config.KGEConfig`; it ignores the keys of
the other owners (its ``KNOWN_NON_KGE_KEYS``, which include :data:`KNOWN_NON_KGE_KEYS` here) and
rejects any other unknown key, while :meth:`FederationSettings.from_run_config` reads only these
keys. Each key is declared once, on its field (:func:`client.kge.registry.key_field`); the whole
registry is :data:`client.kge.run_config.REGISTRY`, so a misspelt key fails loudly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from client.kge.aggregation import AGGREGATIONS, AggregationError, check_rule
from client.kge.local_dp import DP_MODES, LocalDpError, LocalDpSpec, calibrate_noise_multiplier
from client.kge.registry import Key, coerce, key_field, keys_of
from simskip_core.errors import shown

__all__ = [
    "FEDERATION_KEYS",
    "KNOWN_NON_KGE_KEYS",
    "SETTINGS",
    "FederationSettings",
    "SettingsError",
    "UnhonouredKeyError",
    "in_process_local_dp",
]

#: dtypes entity rows may travel in.
TRANSFER_DTYPES = ("float32", "float16")

#: The training settings every federated KGE paper reports with the same budget.
SETTINGS = ("fede", "isolation", "collection")


class SettingsError(ValueError):
    """A federation run-config value is missing, of the wrong type or out of range."""


class UnhonouredKeyError(SettingsError):
    """A run config asks a command for a privacy mode it does not implement (``secure-aggregation = true``
    in an in-process run, ``dp = local`` where the command has no DP path): refused, never ignored."""


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
    :param secure_aggregation: [secure-aggregation] upload each party's rows masked by Flower's SecAgg+
        (:mod:`server.secure_aggregation`): the server obtains only the per-row sums over the holders and
        the holder counts, never one party's rows (``docs/how-to/secure-aggregation.md``). Needs
        ``setting = fede``, ``aggregation = mean`` and ``min-clients`` >= 2.
    :param secagg_num_shares: [secagg-num-shares] SecAgg+'s ``num_shares``: how many parties (itself
        included) each party shares its secrets with; 0 means every sampled party, else an int >= 3.
    :param secagg_reconstruction_threshold: [secagg-reconstruction-threshold] SecAgg+'s
        ``reconstruction_threshold``: the shares needed to rebuild a party's secret, so the parties
        that must answer every stage for the round to complete (>= 2, < ``secagg-num-shares`` when set).
    :param secagg_clipping_range: [secagg-clipping-range] SecAgg+'s ``clipping_range`` c: row values
        are clipped to [-c, c] and quantized in steps of 2c / 2^22; a power of 2 >= 1 (so a 0/1 holder
        mask passes unclipped and quantizes exactly). Each party counts the values it would clip; the
        count goes masked, the server logs the round's sum (``secagg_clipped`` in ``metrics.jsonl``, the
        run's total in ``final_metrics.json`` when above 0).
    :param dp: [dp] ``local``: each party releases its uploaded entity rows through the Gaussian
        mechanism (:mod:`client.kge.local_dp`: the whole update clipped to ``dp-clip``, N(0, (z C)^2)
        noise added before the cast to ``transfer-dtype``) and reports its (epsilon, delta) from an RDP
        accountant; the guarantee covers each party's whole training data given the entity set revealed by
        the handshake, for the uploaded rows only
        (``docs/how-to/differential-privacy.md``). ``none``: rows travel as trained.
    :param dp_clip: [dp-clip] ``dp = local``: ``C``, the Frobenius norm the whole update (uploaded
        minus downloaded rows) is clipped to; must be > 0 there (0: unset).
    :param dp_clip_encoder: [dp-clip-encoder] ``dp = local`` with a federated SimSkip phase: ``C`` of the
        encoder + head weights' whole update (uploaded minus downloaded global weights), released with the
        same ``z`` and counted by the same accountant; required there (> 0), as the encoder's update norm
        is orders of magnitude away from the rows' (0: unset).
    :param dp_noise_multiplier: [dp-noise-multiplier] ``dp = local``: ``z``, the noise std over ``C``
        (>= 0; 0 clips without noise: epsilon infinite, a control only); -1: unset, then give
        ``dp-target-epsilon``.
    :param dp_target_epsilon: [dp-target-epsilon] ``dp = local``, instead of ``dp-noise-multiplier``:
        the epsilon (at ``dp-delta``) each party may reach after ``num-server-rounds`` releases; ``z``
        is calibrated to it (:func:`client.kge.local_dp.calibrate_noise_multiplier`); 0: unset.
    :param dp_delta: [dp-delta] ``dp = local``: the delta epsilon is reported (and calibrated) at, in (0, 1).
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
    secure_aggregation: bool = key_field(
        False, help="mask each party's upload with Flower's SecAgg+ (the server sees only sums)", model_defining=True
    )
    secagg_num_shares: int = key_field(
        0, help="SecAgg+ num_shares: parties each party shares secrets with (0: all sampled)", model_defining=False
    )
    secagg_reconstruction_threshold: int = key_field(
        2, help="SecAgg+ reconstruction_threshold: shares that rebuild a secret (>= 2)", model_defining=False
    )
    secagg_clipping_range: float = key_field(
        8.0, help="SecAgg+ clipping_range c: values clipped to [-c, c]; a power of 2", model_defining=True
    )
    dp: str = key_field(
        "none",
        help="local: each party clips and noises its uploaded rows (Gaussian mechanism)",
        model_defining=True,
        choices=DP_MODES,
    )
    dp_clip: float = key_field(
        0.0, help="dp = local: norm C the whole update is clipped to (0: unset)", model_defining=True
    )
    dp_clip_encoder: float = key_field(
        0.0,
        help="dp = local, federated SimSkip phase: norm C the encoder weights' whole update is clipped to (0: unset)",
        model_defining=True,
    )
    dp_noise_multiplier: float = key_field(
        -1.0, help="dp = local: noise std over C, z >= 0 (-1: unset, give dp-target-epsilon)", model_defining=True
    )
    dp_target_epsilon: float = key_field(
        0.0,
        help="dp = local: epsilon after num-server-rounds releases, z calibrated to it (0: unset)",
        model_defining=True,
    )
    dp_delta: float = key_field(1e-5, help="dp = local: the delta of the reported epsilon", model_defining=True)

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
        self._check_secure_aggregation()
        self._check_dp()

    def _check_secure_aggregation(self) -> None:
        """The SecAgg+ keys, and the settings SecAgg+ cannot serve: it computes only a sum (so no
        median or trimmed mean), of at least 2 parties (fewer have no one to hide among)."""
        c = self.secagg_clipping_range
        # >= 1: SecAgg+ clips every uploaded value to +-c, the 0/1 holder mask included; at c = 0.5 the
        # summed masks halve, the holder counts come out wrong and the rows double
        if not (c >= 1 and math.isfinite(c) and math.frexp(c)[0] == 0.5):
            raise SettingsError(
                f"secagg-clipping-range must be a power of 2 >= 1 (SecAgg+ clips the 0/1 holder mask to it too), "
                f"got {shown(c)}"
            )
        if self.secagg_reconstruction_threshold < 2:
            raise SettingsError(
                f"secagg-reconstruction-threshold must be >= 2, got {shown(self.secagg_reconstruction_threshold)}"
            )
        if self.secagg_num_shares != 0 and not (
            self.secagg_reconstruction_threshold < self.secagg_num_shares and self.secagg_num_shares >= 3
        ):
            raise SettingsError(
                "secagg-num-shares must be 0 (every sampled party) or an int >= 3 and greater than "
                f"secagg-reconstruction-threshold ({self.secagg_reconstruction_threshold}), "
                f"got {shown(self.secagg_num_shares)}"
            )
        if not self.secure_aggregation:
            return
        if self.setting != "fede":
            raise SettingsError(
                f"secure-aggregation = true needs setting = fede (got {self.setting!r}): "
                "isolation uploads nothing to average and collection pools the triples"
            )
        if self.aggregation != "mean":
            raise SettingsError(
                f"secure-aggregation = true needs aggregation = mean (got {self.aggregation!r}): "
                "SecAgg+ reveals only sums, from which no median or trimmed mean can be taken"
            )
        if self.min_clients < 2:
            raise SettingsError(
                f"secure-aggregation = true needs min-clients >= 2 (got {self.min_clients}): "
                "one party's sum is its own rows"
            )

    def _check_dp(self) -> None:
        """The ``dp-*`` keys: their ranges, and the combinations that cannot mean what they say."""
        if self.dp not in DP_MODES:
            raise SettingsError(f"dp must be one of {DP_MODES}, got {shown(self.dp)}")
        z, target = self.dp_noise_multiplier, self.dp_target_epsilon
        if not (self.dp_clip >= 0 and math.isfinite(self.dp_clip)):
            raise SettingsError(f"dp-clip must be a finite number > 0 (0: unset), got {shown(self.dp_clip)}")
        if not (self.dp_clip_encoder >= 0 and math.isfinite(self.dp_clip_encoder)):
            raise SettingsError(
                f"dp-clip-encoder must be a finite number > 0 (0: unset), got {shown(self.dp_clip_encoder)}"
            )
        if not (z == -1.0 or (z >= 0 and math.isfinite(z))):
            raise SettingsError(f"dp-noise-multiplier must be a finite number >= 0 (-1: unset), got {shown(z)}")
        if not (target >= 0 and math.isfinite(target)):
            raise SettingsError(f"dp-target-epsilon must be a finite number > 0 (0: unset), got {shown(target)}")
        if not 0 < self.dp_delta < 1:
            raise SettingsError(f"dp-delta must be in (0, 1), got {shown(self.dp_delta)}")
        given = [
            name
            for name, unset in (
                ("dp-clip", self.dp_clip == 0),
                ("dp-clip-encoder", self.dp_clip_encoder == 0),
                ("dp-noise-multiplier", z == -1.0),
                ("dp-target-epsilon", target == 0),
            )
            if not unset
        ]
        if self.dp == "none":
            if given:
                raise SettingsError(f"{', '.join(given)} set but dp = none: set dp = local, or remove them")
            return
        if self.setting == "collection":
            raise SettingsError(
                "dp = local needs setting = fede or isolation: collection pools the triples, no party uploads rows"
            )
        if self.dp_clip == 0:
            raise SettingsError("dp = local needs dp-clip > 0 (the norm each party's whole update is clipped to)")
        if z == -1.0 and target == 0:
            raise SettingsError("dp = local needs dp-noise-multiplier (z >= 0) or dp-target-epsilon (> 0)")
        if z != -1.0 and target != 0:
            raise SettingsError(
                "dp-noise-multiplier and dp-target-epsilon are exclusive: give the noise, or the epsilon it is "
                "calibrated to"
            )
        if self.secure_aggregation:
            self._check_noise_fits_secagg()

    def _check_noise_fits_secagg(self) -> None:
        """``dp = local`` under SecAgg+: the noise std ``z C`` (of the rows, and of the encoder weights with
        ``dp-clip-encoder``) must stay within ``c / 4`` (c = ``secagg-clipping-range``); beyond it a large
        share of the noised values would be clipped by SecAgg+'s range, biasing every mean. ``z`` is the one
        given or calibrated over ``num-server-rounds`` releases (a SimSkip phase's add a little)."""
        spec = self.local_dp()
        assert spec is not None
        c = self.secagg_clipping_range
        for key, clip in (("dp-clip", self.dp_clip), ("dp-clip-encoder", self.dp_clip_encoder)):
            std = spec.noise_multiplier * clip
            if std > c / 4:
                raise SettingsError(
                    f"dp = local under secure aggregation: the noise std z * {key} = {spec.noise_multiplier:.4g} * "
                    f"{clip:g} = {std:.4g} exceeds secagg-clipping-range / 4 = {c / 4:g}, so SecAgg+ would clip "
                    f"much of the noised upload; set secagg-clipping-range to a power of 2 >= {4 * std:.4g}"
                )

    def local_dp(self, simskip_releases: int = 0) -> LocalDpSpec | None:
        """The resolved ``dp = local`` parameters (``None`` under ``dp = none``); with
        ``dp-target-epsilon``, ``z`` is calibrated over ``num-server-rounds`` releases, plus
        ``simskip_releases`` (a federated SimSkip phase under DP: one release per SimSkip round).

        :raises SettingsError: no noise multiplier reaches the target.
        """
        if self.dp != "local":
            return None
        target = self.dp_target_epsilon if self.dp_target_epsilon > 0 else None
        try:
            z = (
                calibrate_noise_multiplier(target, self.num_server_rounds + int(simskip_releases), self.dp_delta)
                if target is not None
                else self.dp_noise_multiplier
            )
            return LocalDpSpec(self.dp_clip, z, self.dp_delta, target)
        except LocalDpError as err:
            raise SettingsError(str(err)) from None

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


def in_process_local_dp(
    run_config: Mapping[str, Any], *, command: str, honours_dp: bool, simskip_releases: int = 0
) -> LocalDpSpec | None:
    """The one rule of the Flower-free commands (the in-process runners of ``scripts/run_experiments.py``,
    ``scripts/tune_kge.py``, ``scripts/run_central.py``, ``scripts/attack_reconstruction.py``) for the privacy
    keys: ``secure-aggregation = true`` is refused (no in-process engine has SecAgg+), ``dp = local`` is
    refused unless the command honours it, and otherwise its resolved parameters are returned, to be passed on
    as ``dp=`` (a key a run silently ignores would report a plain run as a private one).

    :param run_config: the run config (other owners' keys are ignored here).
    :param command: the command, named in the error (e.g. ``"tune_kge.py"``).
    :param honours_dp: whether the command passes the returned spec on (``run_fede_in_process``'s ``dp=``).
    :param simskip_releases: the SimSkip phase's releases (:func:`client.kge.run_config.simskip_releases`),
        counted when ``z`` is calibrated to ``dp-target-epsilon``.
    :returns: :meth:`FederationSettings.local_dp` (``None`` under ``dp = none``).
    :raises UnhonouredKeyError: naming the key and the command.
    :raises SettingsError: a federation value is out of range (checked by :class:`FederationSettings`).
    """
    settings = FederationSettings.from_run_config(run_config)
    if settings.secure_aggregation:
        raise UnhonouredKeyError(
            f"secure-aggregation = true ({command}): this in-process run has no SecAgg+; run it with "
            "simskip-sim / simskip-server (docs/how-to/secure-aggregation.md), or drop the key"
        )
    if settings.dp == "local" and not honours_dp:
        raise UnhonouredKeyError(
            f"dp = local ({command}): this in-process run has no differentially private path; its result "
            "would be a plain run's. "
            "Drop the dp-* keys (dp = local is honoured by the fede setting: docs/how-to/differential-privacy.md)"
        )
    return settings.local_dp(simskip_releases)


#: The federation's keys of the registry (declared on :class:`FederationSettings`'s fields).
FEDERATION_KEYS: tuple[Key, ...] = keys_of(FederationSettings, "federation")

#: Run-config keys owned by the federation (this module), not by ``KGEConfig``.
KNOWN_NON_KGE_KEYS: frozenset[str] = frozenset(key.name for key in FEDERATION_KEYS)
