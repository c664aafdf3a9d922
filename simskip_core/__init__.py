"""SimSkip: contrastive refinement of any embedding matrix through a skip-connected encoder.

Liu, Kim, Bansal, "Can Contrastive Learning Refine Embeddings", ESWC 2024. Pure PyTorch + NumPy
(no Flower, no PyKEEN) so the federated KGE pipeline and any other caller can use it::

    from simskip_core import SimSkipConfig, SimSkipTrainer, refine
    refined = refine(X, SimSkipConfig(epochs=50))          # X: (n, d) -> (n, d)
    trainer = SimSkipTrainer(X.shape[1], {"seed": 1})
    trainer.fit(X, epochs=5)                                 # one federated round
    weights = trainer.get_weights()                          # [(name, np.ndarray), ...]
"""

from .augment import AUGMENTATIONS, ComposedAugmentation, FeatureMasking, GaussianNoise, build_augmentation
from .config import SimSkipConfig, load_config_file, read_config_mapping
from .embedding_files import EmbeddingTable, read_embeddings, write_embeddings
from .encoder import ACTIVATIONS, NORMALIZATIONS, ProjectionHead, SkipEncoder
from .errors import (
    ConfigError,
    EmbeddingFileError,
    EmbeddingInputError,
    SimSkipError,
    TrainingDivergedError,
    WeightsMismatchError,
)
from .loss import nt_xent_loss
from .trainer import NamedArrays, SimSkipTrainer, refine, resolve_device

__all__ = [
    "ACTIVATIONS",
    "AUGMENTATIONS",
    "NORMALIZATIONS",
    "ComposedAugmentation",
    "ConfigError",
    "EmbeddingTable",
    "EmbeddingFileError",
    "EmbeddingInputError",
    "FeatureMasking",
    "GaussianNoise",
    "NamedArrays",
    "ProjectionHead",
    "SimSkipConfig",
    "SimSkipError",
    "SimSkipTrainer",
    "SkipEncoder",
    "TrainingDivergedError",
    "WeightsMismatchError",
    "build_augmentation",
    "load_config_file",
    "nt_xent_loss",
    "read_config_mapping",
    "read_embeddings",
    "refine",
    "resolve_device",
    "write_embeddings",
]
