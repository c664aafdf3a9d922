"""The message protocol between the server and the parties: record keys and message types.

Written once here and imported by both sides (``server`` may import ``client``, never the other
way; the ClientApp registers its handlers by the action names, the server addresses messages by
the full types). ``message_type`` is Flower's ``category[.action]``:

``query.entities`` (handshake), ``query.restore`` (resume / rejoin), ``train`` (a FedE round),
``evaluate`` (validation), ``evaluate.test`` (final test), ``query.finish`` (end of the run),
``train.simskip`` (a SimSkip round) and ``evaluate.downstream`` (the downstream evaluation).
What each message and reply hold is documented in :mod:`server.strategy` and
:mod:`server.simskip_strategy`.
"""

from __future__ import annotations

from flwr.app import MessageType

__all__ = [
    "CLIENT_INFO_KEY",
    "CONFIG_KEY",
    "DOWNSTREAM_ACTION",
    "DOWNSTREAM_RANKS",
    "DOWNSTREAM_RECORD",
    "DOWNSTREAM_TYPE",
    "ENTITIES_ACTION",
    "ENTITY_ROWS_KEY",
    "FINISH_ACTION",
    "FINISH_TYPE",
    "HANDSHAKE_TYPE",
    "METRICS_KEY",
    "RESTORE_ACTION",
    "RESTORE_TYPE",
    "ROWS_ARRAY",
    "SIMSKIP_ACTION",
    "SIMSKIP_TRAIN_TYPE",
    "TEST_ACTION",
    "TEST_TYPE",
    "TRACK_TEST_PREFIX",
    "VALID_TYPE",
    "WEIGHTS_KEY",
    "WEIGHT_KEY",
]

#: ArrayRecord of a party's entity rows (in its local order) ...
ENTITY_ROWS_KEY = "entity-rows"
#: ... holding one array under this name: float (n_k, entity_dim).
ROWS_ARRAY = "rows"
#: ConfigRecord of a request's settings (round, best round, federation id, ...).
CONFIG_KEY = "config"
#: MetricRecord of a reply's measurements.
METRICS_KEY = "metrics"
#: ConfigRecord of the handshake reply: the party's id, entity labels and split sizes.
CLIENT_INFO_KEY = "client"
#: Metric that weighs a party's evaluation metrics in the overall mean (its evaluated triples).
WEIGHT_KEY = "num_triples"
#: ArrayRecord of the SimSkip encoder weights (the round's starting weights, and a party's reply).
WEIGHTS_KEY = "simskip-weights"
#: ConfigRecord of a downstream reply: {"record": the JSON record of the protocols' metrics}.
DOWNSTREAM_RECORD = "downstream"
#: ArrayRecord of a downstream reply: the reciprocal ranks per protocol and variant.
DOWNSTREAM_RANKS = "downstream-rr"
#: Prefix of the test metrics a party adds to a validation reply when ``track-test`` is on.
TRACK_TEST_PREFIX = "test-"

ENTITIES_ACTION = "entities"
RESTORE_ACTION = "restore"
TEST_ACTION = "test"
FINISH_ACTION = "finish"
SIMSKIP_ACTION = "simskip"
DOWNSTREAM_ACTION = "downstream"

HANDSHAKE_TYPE = f"{MessageType.QUERY}.{ENTITIES_ACTION}"
RESTORE_TYPE = f"{MessageType.QUERY}.{RESTORE_ACTION}"
VALID_TYPE = MessageType.EVALUATE
TEST_TYPE = f"{MessageType.EVALUATE}.{TEST_ACTION}"
FINISH_TYPE = f"{MessageType.QUERY}.{FINISH_ACTION}"
SIMSKIP_TRAIN_TYPE = f"{MessageType.TRAIN}.{SIMSKIP_ACTION}"
DOWNSTREAM_TYPE = f"{MessageType.EVALUATE}.{DOWNSTREAM_ACTION}"
