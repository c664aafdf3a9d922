"""Local differential privacy of the uploaded rows (``dp = local``, client/kge/local_dp.py): the release
(clip the whole update, Gaussian noise, float64), the RDP accountant against a hand computation, the
calibration, the run-config keys, and both engines (in-process FedE, the Flower party's train handler)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from client.kge.local_dp import (
    LocalDpError,
    LocalDpSpec,
    PartyAccountant,
    accountant_multiplier,
    calibrate_noise_multiplier,
    epsilon_for,
    release_rows,
)
from client.kge.settings import FederationSettings, SettingsError

DELTA = 1e-5


def _update(rng: np.random.Generator, shape=(50, 16), scale=1.0):
    downloaded = rng.normal(size=shape)
    return downloaded + scale * rng.normal(size=shape), downloaded


# --- the release ------------------------------------------------------------------------------------


def test_without_noise_the_update_is_clipped_to_c_and_kept_below_it() -> None:
    rng = np.random.default_rng(0)
    uploaded, downloaded = _update(rng, scale=1.0)  # norm about sqrt(800) = 28
    big = release_rows(uploaded, downloaded, clip=2.0, noise_multiplier=0.0)
    assert big.clipped and big.norm == pytest.approx(np.linalg.norm(uploaded - downloaded))
    assert np.linalg.norm(big.rows - downloaded) == pytest.approx(2.0, rel=1e-12)
    # the direction is kept: the released update is the update scaled down
    np.testing.assert_allclose(big.rows - downloaded, (uploaded - downloaded) * 2.0 / big.norm, atol=1e-12)
    small = release_rows(uploaded, downloaded, clip=100.0, noise_multiplier=0.0)
    assert not small.clipped
    np.testing.assert_array_equal(small.rows, uploaded)  # below C: unchanged
    assert big.rows.dtype == np.float64


def test_zero_update_gives_noise_of_std_z_times_c() -> None:
    downloaded = np.zeros((500, 400), dtype=np.float32)  # 200,000 draws: 1 % is about 6 standard errors
    z, clip = 3.0, 0.7
    release = release_rows(downloaded, downloaded, clip, z, rng=np.random.default_rng(1))
    noise = release.rows - downloaded
    assert not release.clipped and release.norm == 0.0
    assert noise.std() == pytest.approx(z * clip, rel=0.01)
    assert abs(noise.mean()) < 0.01 * z * clip


def test_an_update_whose_float16_norm_overflows_is_still_clipped() -> None:
    downloaded = np.zeros((100, 64), dtype=np.float16)
    uploaded = np.full((100, 64), 100.0, dtype=np.float16)  # norm 8000; its float16 sum of squares overflows
    with np.errstate(over="ignore"):
        assert np.isinf(np.linalg.norm(uploaded - downloaded))  # what a float16 norm (Flower's LocalDpMod) sees
    release = release_rows(uploaded, downloaded, clip=1.5, noise_multiplier=0.0)
    assert release.clipped and release.norm == pytest.approx(8000.0)
    assert np.linalg.norm(release.rows - downloaded) == pytest.approx(1.5, rel=1e-12)
    assert np.all(release.rows > 0)  # clipped, not zeroed


def test_noise_differs_between_calls_without_an_rng() -> None:
    uploaded, downloaded = _update(np.random.default_rng(2))
    first = release_rows(uploaded, downloaded, clip=1.0, noise_multiplier=1.0)
    second = release_rows(uploaded, downloaded, clip=1.0, noise_multiplier=1.0)
    assert not np.array_equal(first.rows, second.rows)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"clip": 0.0, "noise_multiplier": 1.0}, "dp-clip"),
        ({"clip": 1.0, "noise_multiplier": -0.5}, "dp-noise-multiplier"),
        ({"clip": float("nan"), "noise_multiplier": 1.0}, "dp-clip"),
    ],
)
def test_release_refuses_bad_parameters(kwargs, match) -> None:
    rows = np.zeros((2, 2))
    with pytest.raises(LocalDpError, match=match):
        release_rows(rows, rows, **kwargs)


def test_release_refuses_shapes_that_differ_and_a_non_finite_update() -> None:
    with pytest.raises(LocalDpError, match="shape"):
        release_rows(np.zeros((2, 3)), np.zeros((3, 2)), 1.0, 1.0)
    with pytest.raises(LocalDpError, match="not finite"):
        release_rows(np.array([[np.inf]]), np.zeros((1, 1)), 1.0, 1.0)


# --- the accountant -----------------------------------------------------------------------------------


def _hand_epsilon(s: float, releases: int, delta: float, orders) -> float:
    """rdp(a) = T a / (2 s^2); eps = min_a [rdp(a) + log1p(-1/a) - (ln delta + ln a) / (a - 1)]."""
    a = np.asarray(orders, dtype=np.float64)
    a = a[a > 1]
    rdp = releases * a / (2 * s * s)
    return float(np.min(rdp + np.log1p(-1 / a) - (math.log(delta) + np.log(a)) / (a - 1)))


def test_accountant_matches_the_hand_computation_and_the_known_bounds() -> None:
    from dp_accounting import get_epsilon_gaussian
    from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS

    z, releases = 10.0, 50  # accountant multiplier s = z / 2 = 5
    s = accountant_multiplier(z)
    assert s == 5.0
    accountant = PartyAccountant(DELTA)
    for _ in range(releases):
        accountant.record_release(z)
    assert accountant.releases == releases
    assert accountant.epsilon == pytest.approx(7.0774, abs=5e-5)
    assert accountant.epsilon == pytest.approx(_hand_epsilon(s, releases, DELTA, DEFAULT_RDP_ORDERS), abs=1e-9)
    exact = get_epsilon_gaussian(s / math.sqrt(releases), DELTA)  # T Gaussians = one with mu = sqrt(T) / s
    mironov = releases / (2 * s * s) + math.sqrt(2 * releases * math.log(1 / DELTA)) / s
    assert exact == pytest.approx(6.5730, abs=5e-5) and mironov == pytest.approx(7.7861, abs=5e-5)
    assert exact < accountant.epsilon < mironov
    assert epsilon_for(z, releases, DELTA) == pytest.approx(accountant.epsilon, abs=1e-12)


def test_accountant_state_survives_json_and_refuses_another_delta() -> None:
    accountant = PartyAccountant(DELTA)
    accountant.record_release(4.0, 3)
    accountant.record_release(8.0)
    restored = PartyAccountant.from_json(json.dumps(accountant.state_dict()), DELTA)
    assert restored.releases == 4 and restored.noise_multipliers == [4.0, 8.0]
    assert restored.epsilon == accountant.epsilon > 0
    assert restored.spent()["epsilon"] == accountant.epsilon
    with pytest.raises(LocalDpError, match="delta"):
        PartyAccountant.from_json(accountant.to_json(), 1e-6)
    with pytest.raises(LocalDpError, match="ledger"):
        PartyAccountant(DELTA).load_state_dict({**accountant.state_dict(), "ledger": [["x", 1]]})
    assert PartyAccountant(DELTA).epsilon == 0.0
    no_noise = PartyAccountant(DELTA)
    no_noise.record_release(0.0)
    assert no_noise.epsilon == math.inf


@pytest.mark.parametrize(("target", "releases"), [(8.0, 50), (1.0, 100), (50.0, 3)])
def test_calibration_round_trips(target, releases) -> None:
    z = calibrate_noise_multiplier(target, releases, DELTA)
    spent = epsilon_for(z, releases, DELTA)
    assert spent <= target
    assert spent == pytest.approx(target, rel=1e-3)
    assert epsilon_for(z * 0.99, releases, DELTA) > target  # the smallest such z, not just any


def test_calibration_reproduces_the_design_table() -> None:
    # docs/design/secure-aggregation-and-dp.md: target 8 -> z 9.0 (T 50), 12.8 (T 100); target 4 -> 16.4 (T 50)
    assert calibrate_noise_multiplier(8.0, 50, DELTA) == pytest.approx(9.0, abs=0.05)
    assert calibrate_noise_multiplier(8.0, 100, DELTA) == pytest.approx(12.8, abs=0.05)
    assert calibrate_noise_multiplier(4.0, 50, DELTA) == pytest.approx(16.4, abs=0.05)


# --- the run-config keys ------------------------------------------------------------------------------


def test_settings_resolve_the_noise_given_or_calibrated() -> None:
    assert FederationSettings().local_dp() is None
    given = FederationSettings.from_run_config({"dp": "local", "dp-clip": 2.0, "dp-noise-multiplier": 4.0})
    assert given.local_dp() == LocalDpSpec(2.0, 4.0, DELTA, None)
    target = FederationSettings.from_run_config(
        {"dp": "local", "dp-clip": 1.0, "dp-target-epsilon": 8.0, "num-server-rounds": 50}
    ).local_dp()
    assert target is not None and target.target_epsilon == 8.0
    assert target.noise_multiplier == calibrate_noise_multiplier(8.0, 50, DELTA)


@pytest.mark.parametrize(
    ("run_config", "match"),
    [
        ({"dp": "local", "dp-noise-multiplier": 1.0}, "needs dp-clip"),
        ({"dp": "local", "dp-clip": 1.0}, "dp-noise-multiplier .* or dp-target-epsilon"),
        ({"dp": "local", "dp-clip": 1.0, "dp-noise-multiplier": 1.0, "dp-target-epsilon": 4.0}, "exclusive"),
        ({"dp": "local", "dp-clip": 1.0, "dp-noise-multiplier": 1.0, "setting": "collection"}, "collection"),
        ({"dp-clip": 1.0}, "dp = none"),
        ({"dp": "local", "dp-clip": -1.0, "dp-noise-multiplier": 1.0}, "dp-clip"),
        ({"dp": "local", "dp-clip": 1.0, "dp-noise-multiplier": -2.0}, "dp-noise-multiplier"),
        ({"dp": "local", "dp-clip": 1.0, "dp-noise-multiplier": 1.0, "dp-delta": 1.0}, "dp-delta"),
        ({"dp": "global"}, "dp must be one of"),
    ],
)
def test_bad_dp_combinations_are_named_errors(run_config, match) -> None:
    with pytest.raises(SettingsError, match=match):
        FederationSettings.from_run_config(run_config)


def test_dp_with_a_federated_simskip_phase_needs_its_encoder_clip() -> None:
    from client.kge.run_config import load_run_configs, simskip_releases

    dp = {"dp": "local", "dp-clip": 1.0, "dp-noise-multiplier": 1.0}
    with pytest.raises(SettingsError, match="dp-clip-encoder > 0"):
        load_run_configs({**dp, "simskip-rounds": 2})
    settings, _, refinement = load_run_configs({**dp, "simskip-rounds": 2, "dp-clip-encoder": 0.05})
    assert settings.dp_clip_encoder == 0.05 and simskip_releases(settings, refinement) == 2
    settings, _, refinement = load_run_configs({**dp, "simskip-rounds": 0})
    assert settings.dp == "local" and simskip_releases(settings, refinement) == 0
    settings, _, refinement = load_run_configs({**dp, "simskip-federate": False})  # each party refines alone
    assert simskip_releases(settings, refinement) == 0
    with pytest.raises(SettingsError, match="dp = none"):
        FederationSettings.from_run_config({"dp-clip-encoder": 0.05})
    with pytest.raises(SettingsError, match="dp-clip-encoder"):
        FederationSettings.from_run_config({**dp, "dp-clip-encoder": -1.0})


def test_a_target_epsilon_is_calibrated_over_the_kge_and_the_simskip_releases() -> None:
    settings = FederationSettings.from_run_config(
        {"dp": "local", "dp-clip": 1.0, "dp-target-epsilon": 8.0, "num-server-rounds": 50}
    )
    both = settings.local_dp(simskip_releases=10)
    assert both.noise_multiplier == calibrate_noise_multiplier(8.0, 60, DELTA) > settings.local_dp().noise_multiplier
    assert epsilon_for(both.noise_multiplier, 60, DELTA) <= 8.0


def test_named_weights_are_released_as_one_update() -> None:
    from client.kge.local_dp import release_weights

    rng = np.random.default_rng(3)
    downloaded = [("a/w", rng.normal(size=(4, 3))), ("a/b", rng.normal(size=(3,))), ("b/w", rng.normal(size=(2, 2)))]
    uploaded = [(name, array + rng.normal(size=array.shape)) for name, array in downloaded]
    released, release = release_weights(uploaded, downloaded, clip=0.5, noise_multiplier=0.0)
    assert [(n, a.shape) for n, a in released] == [(n, a.shape) for n, a in downloaded]
    update = np.concatenate([(r - d).ravel() for (_, r), (_, d) in zip(released, downloaded)])
    full = np.concatenate([(u - d).ravel() for (_, u), (_, d) in zip(uploaded, downloaded)])
    assert release.clipped and release.norm == pytest.approx(np.linalg.norm(full))
    assert np.linalg.norm(update) == pytest.approx(0.5, rel=1e-12)  # the whole update, not each array
    np.testing.assert_allclose(update, full * 0.5 / release.norm, atol=1e-12)
    with pytest.raises(LocalDpError, match="differ"):
        release_weights(uploaded[:2], downloaded, clip=0.5, noise_multiplier=0.0)


# --- the in-process engine ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nations_kg():
    import torch

    from kg_datasets import load_federated

    torch.set_num_threads(1)
    return load_federated("Nations", num_clients=3, partition="triple", seed=0)


def _fede(kg, rounds: int, dp: LocalDpSpec | None):
    from client.kge.centralized import run_fede_in_process
    from client.kge.config import KGEConfig

    config = KGEConfig.from_run_config({"embedding-dim": 8, "local-epochs": 1, "num-negs-per-pos": 4, "patience": 100})
    seen: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def observer(server_round, index, ids, sent, returned, model) -> None:
        seen[server_round, index] = (np.array(sent), np.array(returned))

    result = run_fede_in_process(
        kg, config, rounds, device="cpu", progress=lambda line: None, on_upload=observer, dp=dp
    )
    return result, seen


def test_in_process_fede_releases_each_upload_and_reports_epsilon(nations_kg) -> None:
    plain, plain_seen = _fede(nations_kg, 2, None)
    assert "dp" not in plain
    # z = 0 with a small clip: the observer sees exactly sent + the trained update clipped to C
    clip = 0.005  # trained updates here have norms near 0.015
    clipped, clipped_seen = _fede(nations_kg, 2, LocalDpSpec(clip, 0.0))
    for index in range(3):
        sent, trained = plain_seen[1, index]  # round 1 trains the same in both runs (same seed, same rows)
        sent_dp, released = clipped_seen[1, index]
        np.testing.assert_array_equal(sent, sent_dp)
        update = trained.astype(np.float64) - sent
        expected = sent + update * min(1.0, clip / np.linalg.norm(update))
        np.testing.assert_allclose(released, expected, atol=1e-6)
        assert np.linalg.norm(released.astype(np.float64) - sent) <= clip * (1 + 1e-5)
    # z = 0: epsilon infinite, written as null (JSON has no Infinity) with a note
    assert (
        clipped["dp"]["parties"]["0"]["epsilon"] is None and "infinite" in clipped["dp"]["parties"]["0"]["epsilon_note"]
    )
    assert clipped["dp"]["rounds"][0]["parties"]["0"]["epsilon"] is None
    assert "Infinity" not in json.dumps(clipped["dp"])
    # with noise: the released rows differ from the plain run's and between two runs of the same seed
    z = 2.0
    noisy, noisy_seen = _fede(nations_kg, 2, LocalDpSpec(clip, z))
    _again, again_seen = _fede(nations_kg, 2, LocalDpSpec(clip, z))
    for index in range(3):
        assert not np.allclose(noisy_seen[1, index][1], plain_seen[1, index][1])
        assert not np.array_equal(noisy_seen[1, index][1], again_seen[1, index][1])
    expected_eps = epsilon_for(z, 2, DELTA)
    record = noisy["dp"]
    assert record["noise_multiplier"] == z and record["clip"] == clip and record["delta"] == DELTA
    assert set(record["parties"]) == {"0", "1", "2"}
    for party in record["parties"].values():
        assert party["releases"] == 2 and party["epsilon"] == pytest.approx(expected_eps, abs=1e-12)
    assert [r["round"] for r in record["rounds"]] == [1, 2]
    assert record["rounds"][0]["parties"]["1"]["epsilon"] == pytest.approx(epsilon_for(z, 1, DELTA), abs=1e-12)
    assert all(r["parties"]["0"]["clipped"] for r in record["rounds"])  # C is below every trained update
    json.dumps(noisy, allow_nan=False)  # JSON-ready


def test_in_process_dp_accountants_survive_a_checkpoint(nations_kg) -> None:
    from client.kge.centralized import run_fede_in_process
    from client.kge.config import KGEConfig

    class Memory:
        saved = None

        def load(self):
            return self.saved

        def save(self, round_number, arrays, state):
            self.saved = (round_number, dict(arrays), json.loads(json.dumps(state)))

    config = KGEConfig.from_run_config({"embedding-dim": 8, "local-epochs": 1, "num-negs-per-pos": 4, "patience": 100})
    memory, spec = Memory(), LocalDpSpec(1.0, 4.0)
    run_fede_in_process(nations_kg, config, 1, device="cpu", progress=lambda line: None, checkpoint=memory, dp=spec)
    resumed = run_fede_in_process(
        nations_kg, config, 2, device="cpu", progress=lambda line: None, checkpoint=memory, dp=spec
    )
    assert resumed["resumed_after_round"] == 1
    assert {p["releases"] for p in resumed["dp"]["parties"].values()} == {2}
    assert [r["round"] for r in resumed["dp"]["rounds"]] == [1, 2]
    with pytest.raises(ValueError, match="no DP accountant state"):
        memory.saved = (memory.saved[0], memory.saved[1], {**memory.saved[2], "extra": None})
        run_fede_in_process(nations_kg, config, 3, device="cpu", progress=lambda line: None, checkpoint=memory, dp=spec)


# --- the Flower party ---------------------------------------------------------------------------------

TINY = {"embedding-dim": 4, "local-epochs": 1, "num-negs-per-pos": 2, "batch-size": 64, "eval-batch-size": 64}
DP_RUN = {"dp": "local", "dp-clip": 0.5, "dp-noise-multiplier": 3.0, "simskip-rounds": 0}


@pytest.fixture(scope="module")
def nations_folder(tmp_path_factory):
    from kg_datasets import load_federated

    out = tmp_path_factory.mktemp("nations") / "data"
    load_federated("Nations", num_clients=2, partition="relation", seed=0).write(out)
    return out


def _party(data_root, out_root, run_config) -> Context:
    return Context(
        run_id=1,
        node_id=5,
        node_config={"partition-id": 0},
        state=RecordDict(),
        run_config={**TINY, **run_config, "client-data-root": str(data_root), "client-output-root": str(out_root)},
    )


def _train(context: Context, rows: np.ndarray, server_round: int, federation: str = "f1"):
    from client import client_app

    msg = Message(
        content=RecordDict(
            {
                client_app.ENTITY_ROWS_KEY: ArrayRecord({client_app.ROWS_ARRAY: Array(rows)}),
                client_app.CONFIG_KEY: ConfigRecord({"server-round": server_round, "federation-id": federation}),
            }
        ),
        dst_node_id=5,
        message_type="train",
    )
    reply = client_app.train(msg, context)
    content = reply.content
    return content.array_records[client_app.ENTITY_ROWS_KEY][client_app.ROWS_ARRAY].numpy(), content.metric_records[
        client_app.METRICS_KEY
    ]


@pytest.mark.usefixtures("task_identity")
def test_party_releases_its_rows_and_reports_its_accountant(nations_folder, tmp_path) -> None:
    from client.party_dp import DP_STATE_FILE
    from kg_datasets import load_client_folder

    n = load_client_folder(nations_folder / "0", client_id=0).num_entities
    sent = np.random.default_rng(0).normal(size=(n, 4)).astype(np.float16)  # float16 on the wire
    plain_rows, plain_metrics = _train(_party(nations_folder, tmp_path / "plain", {"simskip-rounds": 0}), sent, 1)
    assert "dp-epsilon" not in plain_metrics

    # z = 0 (float32 on the wire, so no rounding hides it): the released update has norm C (the trained
    # update's norm is about 0.06 here)
    clip_only = _party(nations_folder, tmp_path / "clip", {**DP_RUN, "dp-clip": 0.02, "dp-noise-multiplier": 0.0})
    sent32 = sent.astype(np.float32)
    rows, _ = _train(clip_only, sent32, 1)
    assert rows.dtype == np.float32
    assert np.linalg.norm(rows.astype(np.float64) - sent32) == pytest.approx(0.02, rel=1e-4)

    context = _party(nations_folder, tmp_path / "dp", DP_RUN)
    rows1, metrics1 = _train(context, sent, 1)
    assert rows1.dtype == np.float16 and not np.array_equal(rows1, plain_rows)
    assert metrics1["dp-releases"] == 1 and metrics1["dp-epsilon"] == pytest.approx(epsilon_for(3.0, 1))
    assert metrics1["dp-noise-multiplier"] == 3.0 and metrics1["dp-delta"] == DELTA
    # exactly these keys are added, all data-independent (no update norm, no clipped flag)
    assert set(metrics1) - set(plain_metrics) == {"dp-epsilon", "dp-releases", "dp-noise-multiplier", "dp-delta"}
    assert set(plain_metrics) <= set(metrics1)
    _, metrics2 = _train(context, rows1, 2)
    assert metrics2["dp-releases"] == 2 and metrics2["dp-epsilon"] == pytest.approx(epsilon_for(3.0, 2))
    saved = json.loads((tmp_path / "dp" / "0" / DP_STATE_FILE).read_text())
    assert saved["federation-id"] == "f1" and saved["spent"]["releases"] == 2
    # a party whose context.state is gone (a restarted SuperNode) goes on counting from its file ...
    restarted = _party(nations_folder, tmp_path / "dp", DP_RUN)
    _, metrics3 = _train(restarted, rows1, 3)
    assert metrics3["dp-releases"] == 3
    # ... but a new federation starts afresh, keeping the earlier federation's file beside its own
    _, other = _train(_party(nations_folder, tmp_path / "dp", DP_RUN), rows1, 1, federation="f2")
    assert other["dp-releases"] == 1
    kept = json.loads((tmp_path / "dp" / "0" / "dp_accountant.f1.json").read_text())
    assert kept["federation-id"] == "f1" and kept["spent"]["releases"] == 3
    assert json.loads((tmp_path / "dp" / "0" / DP_STATE_FILE).read_text())["federation-id"] == "f2"


@pytest.mark.usefixtures("task_identity")
def test_a_corrupt_accountant_file_is_an_error_naming_it(nations_folder, tmp_path) -> None:
    from client.party_dp import DP_STATE_FILE

    n = _entities(nations_folder)
    path = tmp_path / "dp" / "0" / DP_STATE_FILE
    path.parent.mkdir(parents=True)
    for text in ("{not json", '{"federation-id": "f1"}', '{"federation-id": "f1", "state": [1, 2]}'):
        path.write_text(text)
        with pytest.raises(LocalDpError, match=str(path).replace("/", ".")):
            _train(_party(nations_folder, tmp_path / "dp", DP_RUN), np.zeros((n, 4), np.float16), 1)


@pytest.mark.usefixtures("task_identity")
def test_a_target_epsilon_is_a_privacy_filter(nations_folder, tmp_path) -> None:
    """dp-target-epsilon 8 over 2 planned releases: the third (e.g. a resume re-running a round) is refused
    before any noise is drawn, and the accountant still says 2."""
    from client.kge.local_dp import PrivacyBudgetExceeded
    from client.party_dp import DP_STATE_FILE

    run = {"dp": "local", "dp-clip": 0.5, "dp-target-epsilon": 8.0, "num-server-rounds": 2, "simskip-rounds": 0}
    context = _party(nations_folder, tmp_path / "dp", run)
    rows = np.zeros((_entities(nations_folder), 4), np.float16)
    _train(context, rows, 1)
    _, second = _train(context, rows, 2)
    assert second["dp-releases"] == 2 and second["dp-epsilon"] <= 8.0
    with pytest.raises(PrivacyBudgetExceeded, match=r"round 2: .* past dp-target-epsilon 8"):
        _train(context, rows, 2)  # the same round again
    assert json.loads((tmp_path / "dp" / "0" / DP_STATE_FILE).read_text())["spent"]["releases"] == 2


def _entities(nations_folder) -> int:
    from kg_datasets import load_client_folder

    return load_client_folder(nations_folder / "0", client_id=0).num_entities


def test_the_servers_dp_record_bounds_epsilon_by_the_messages_it_sent() -> None:
    """The server's own figure: one release per train message it sent (a lost or rejected reply counts, a
    validation failure does not); a dp-releases value that goes down is flagged; z = 0 gives null."""
    from server.records import dp_record, dp_text

    def reply(releases, z=3.0):
        return {
            "dp-epsilon": epsilon_for(z, releases, DELTA),
            "dp-releases": releases,
            "dp-noise-multiplier": z,
            "dp-delta": DELTA,
        }

    rows = [
        {"round": 1, "train": {"0": reply(1), "1": reply(1)}},
        {"round": 2, "train": {"1": reply(2)}, "failures": ["0: timeout (no reply within 5 s)"]},
        {"round": 3, "train": {"0": reply(2), "1": reply(3)}, "failures": ["1: validation: timeout"]},
        {"round": 4, "train": {"0": reply(1)}, "failures": ["node 99: reply from a node that got no message"]},
    ]
    record = dp_record(rows)
    zero, one = record["parties"]["0"], record["parties"]["1"]
    assert zero["messages_sent"] == 4 and one["messages_sent"] == 3
    assert zero["epsilon_bound"] == pytest.approx(epsilon_for(3.0, 4, DELTA))
    assert zero["epsilon"] == pytest.approx(epsilon_for(3.0, 1, DELTA)) and zero["epsilon"] < zero["epsilon_bound"]
    assert zero["releases_went_down"] == [4] and "releases_went_down" not in one
    assert record["max_epsilon_bound"] == pytest.approx(epsilon_for(3.0, 4, DELTA))
    assert "WARNING: dp-releases went down in rounds [4]" in dp_text(record)
    no_noise = dp_record([{"round": 1, "train": {"0": reply(1, z=0.0)}}])
    assert no_noise["parties"]["0"]["epsilon"] is None and no_noise["max_epsilon"] is None
    assert "Infinity" not in json.dumps(no_noise) and "epsilon inf" in dp_text(no_noise)


@pytest.mark.usefixtures("task_identity")
def test_server_records_each_partys_epsilon_and_a_lost_reply_still_counts(nations_folder) -> None:
    from flwr.app import Error

    from server.records import dp_record, dp_text
    from tests.handler_grid import HandlerGrid, node_contexts, train_fede

    def lose_round_1_of_party_0(msg, reply):  # the party released its rows; the reply never arrives
        config = msg.content.config_records.get("config") or {}
        if msg.metadata.message_type == "train" and msg.metadata.dst_node_id == 10 and config.get("server-round") == 1:
            return Message(Error(code=1, reason="reply lost"), reply_to=msg)
        return None

    run_config = {**TINY, **DP_RUN, "client-data-root": str(nations_folder)}
    grid = HandlerGrid(node_contexts(run_config, 2), tamper=lose_round_1_of_party_0)
    _, result, _, _ = train_fede(grid, run_config, kge_rounds=2)
    rounds = [report.as_dict() for report in result.rounds]
    assert set(rounds[0]["train"]) == {"1"} and set(rounds[1]["train"]) == {"0", "1"}
    assert "dp-epsilon" in rounds[0]["train"]["1"]
    record = dp_record(result.rounds)
    assert record is not None and set(record["parties"]) == {"0", "1"}
    for name, party in record["parties"].items():
        # the party's accountant counted the release whose reply was lost: 2 releases, 1 received
        assert party["releases"] == 2 and party["rounds_received"] == (1 if name == "0" else 2)
        assert party["epsilon"] == pytest.approx(epsilon_for(3.0, 2, DELTA))
        # the server's own bound: both parties were sent 2 train messages (party 0's lost reply included)
        assert party["messages_sent"] == 2 and party["epsilon_bound"] == pytest.approx(party["epsilon"])
    assert record["max_epsilon"] == pytest.approx(epsilon_for(3.0, 2, DELTA))
    assert dp_record(rounds) == record  # also from metrics.jsonl rows
    assert "party 0: epsilon" in dp_text(record)


def test_console_summary_says_each_partys_epsilon(tmp_path) -> None:
    from server.report import console_summary

    final = {
        "setting": "fede",
        "test_overall": {"mrr": 0.1},
        "best_round": 2,
        "rounds_run": 2,
        "clients": ["0", "1"],
        "dp": {
            "parties": {
                name: {"epsilon": 7.0774, "delta": 1e-5, "releases": 50, "noise_multiplier": 10.0}
                for name in ("0", "1")
            },
            "max_epsilon": 7.0774,
        },
    }
    (tmp_path / "final_metrics.json").write_text(json.dumps(final))
    text = console_summary(tmp_path)
    assert "party 0: epsilon 7.077 at delta 1e-05 after 50 releases" in text and "party 1:" in text


@pytest.mark.usefixtures("task_identity")
def test_a_federated_simskip_phase_releases_the_encoder_in_the_same_accountant(
    nations_folder, tmp_path, monkeypatch
) -> None:
    """Every upload counts: KGE rounds + SimSkip rounds releases per party. With z = 0 the uploaded weights
    are the downloaded global weights plus the update clipped to dp-clip-encoder (not the trained ones)."""
    from client import party_dp
    from client.party_dp import DP_STATE_FILE
    from server.simskip_strategy import SIMSKIP_TRAIN_TYPE, WEIGHTS_KEY
    from tests.handler_grid import run_both_phases

    released_log = []
    original = party_dp.release_weights

    def recording(uploaded, downloaded, clip, noise_multiplier, rng=None):
        out = original(uploaded, downloaded, clip, noise_multiplier, rng)
        released_log.append((list(uploaded), list(downloaded), clip, out))
        return out

    monkeypatch.setattr(party_dp, "release_weights", recording)
    clip_encoder = 1e-3  # the update norm is about 4e-3 here (embedding-dim 4, one local epoch)
    run_config = {
        **TINY,
        "eval-every": 1,
        "client-data-root": str(nations_folder),
        "client-output-root": str(tmp_path / "clients"),
        "dp": "local",
        "dp-clip": 100.0,
        "dp-clip-encoder": clip_encoder,
        "dp-noise-multiplier": 0.0,
        "simskip-rounds": 2,
        "simskip-local-epochs": 1,
        "downstream-protocols": "as-trained",
    }
    grid, _, result, records, _ = run_both_phases(run_config, tmp_path, kge_rounds=2)
    assert set(records) == {"0", "1"} and len(result.rounds) == 2
    replies = [reply for msg, reply in grid.log if msg.metadata.message_type == SIMSKIP_TRAIN_TYPE]
    assert len(replies) == len(released_log) == 2 * 2
    for reply, (trained, downloaded, clip, (released, release)) in zip(replies, released_log):
        assert clip == clip_encoder and release.clipped and release.norm > clip_encoder
        update = np.concatenate(
            [(r - np.asarray(d, np.float64)).ravel() for (_, r), (_, d) in zip(released, downloaded)]
        )
        assert np.linalg.norm(update) == pytest.approx(clip_encoder, rel=1e-9)
        uploaded = reply.content.array_records[WEIGHTS_KEY]
        sent = {name: uploaded[name].numpy() for name in uploaded}
        for name, r in released:
            np.testing.assert_array_equal(sent[name], r.astype(np.float32))  # what left the party
        assert any(not np.allclose(r, t) for (_, r), (_, t) in zip(released, trained))  # not the plain weights
    metrics = [reply.content.metric_records["metrics"] for reply in replies]
    assert sorted(int(m["dp-releases"]) for m in metrics) == [3, 3, 4, 4]  # after 2 KGE releases
    for party in ("0", "1"):
        state = json.loads((tmp_path / "clients" / party / DP_STATE_FILE).read_text())
        assert state["spent"]["releases"] == len(result.rounds) + 2  # KGE rounds + SimSkip rounds
    # the server's SimSkip history says each party's count so far
    history = [json.loads(line) for line in (tmp_path / "simskip_metrics.jsonl").read_text().splitlines()]
    assert [{k: v["releases"] for k, v in row["dp"].items()} for row in history] == [
        {"0": 3, "1": 3},
        {"0": 4, "1": 4},
    ]
    from server.report import console_summary

    assert "DP after the SimSkip phase (rows and encoder weights): party 0: epsilon inf after 4 releases, party 1:" in (
        console_summary(tmp_path)
    )


def test_the_in_process_simskip_phase_releases_each_clients_weights() -> None:
    """run_refinement (the refine-only step of --engine in-process) releases as the Flower party does:
    each client's update against the round's global weights clipped to dp-clip-encoder, counted in its
    accountant (continued from earlier releases)."""
    from client.kge.refinement import RefinementConfig, initial_weights, pack_variants, run_refinement

    rng = np.random.default_rng(0)
    rows = {"a": rng.normal(size=(20, 8)).astype(np.float32), "b": rng.normal(size=(30, 8)).astype(np.float32)}
    config = RefinementConfig.from_run_config({"simskip-rounds": 1, "simskip-local-epochs": 1})
    plain = run_refinement(rows, config)
    earlier = PartyAccountant(DELTA)
    earlier.record_release(2.0, 3)  # e.g. the KGE phase's releases
    accountants = {"a": earlier}
    clip = 1e-4
    released = run_refinement(rows, config, dp=LocalDpSpec(clip, 0.0, DELTA), accountants=accountants)
    assert accountants["a"].releases == 4 and accountants["b"].releases == 1
    assert released.history[0]["dp"] == {
        "a": {"epsilon": None, "releases": 4},  # z = 0: no privacy, a control (null: JSON has no Infinity)
        "b": {"epsilon": None, "releases": 1},
    }
    start = pack_variants(initial_weights(8, config))
    final = pack_variants(released.weights["a"])
    moved = np.concatenate([(f - s).ravel() for (_, f), (_, s) in zip(final, start)])
    plain_moved = np.concatenate([(f - s).ravel() for (_, f), (_, s) in zip(pack_variants(plain.weights["a"]), start)])
    assert np.linalg.norm(plain_moved) > 10 * clip  # the plain update is far larger than the clip
    assert np.linalg.norm(moved) <= clip * (1 + 1e-4)  # a mean of updates each clipped to C (float32)
    assert "dp" not in plain.history[0]
