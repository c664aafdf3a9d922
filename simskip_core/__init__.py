"""SimSkip: contrastive refinement of any embedding matrix through a skip-connected encoder.

Liu, Kim, Bansal, "Can Contrastive Learning Refine Embeddings", ESWC 2024. Pure PyTorch + NumPy
(no Flower, no PyKEEN) so the federated KGE pipeline and any other caller can use it::

    from simskip_core import SimSkipConfig, SimSkipTrainer, refine
    refined = refine(X, SimSkipConfig(epochs=50))          # X: (n, d) -> (n, d)
    trainer = SimSkipTrainer(X.shape[1], {"seed": 1})
    trainer.fit(X, epochs=5)                                 # one federated round
    weights = trainer.get_weights()                          # [(name, np.ndarray), ...]
    mean_relative_displacement(X, refined)                   # mean ||f(x) - x|| / ||x||
    control = perturb_like(X, refined, seed=0)               # as far, in random directions
    trainer.fit(X, row_view=provider)                        # augmentations ("row_view", ...): the
                                                             # caller's view of each row, see augment

By default (``SimSkipConfig.standardize``) the trainer works in units of the matrix's root mean
square, so ``refine(c * X) == c * refine(X)``; before, how far rows moved depended on their
absolute size (see :mod:`simskip_core.trainer`).
"""

from .augment import (
    AUGMENTATIONS,
    ROW_VIEW,
    ComposedAugmentation,
    FeatureMasking,
    GaussianNoise,
    RowView,
    RowViewProvider,
    build_augmentation,
)
from .config import SimSkipConfig, load_config_file, read_config_mapping
from .controls import mean_relative_displacement, perturb_like, relative_displacement
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
    "ROW_VIEW",
    "ComposedAugmentation",
    "ConfigError",
    "EmbeddingFileError",
    "EmbeddingInputError",
    "EmbeddingTable",
    "FeatureMasking",
    "GaussianNoise",
    "NamedArrays",
    "ProjectionHead",
    "RowView",
    "RowViewProvider",
    "SimSkipConfig",
    "SimSkipError",
    "SimSkipTrainer",
    "SkipEncoder",
    "TrainingDivergedError",
    "WeightsMismatchError",
    "build_augmentation",
    "load_config_file",
    "mean_relative_displacement",
    "nt_xent_loss",
    "perturb_like",
    "read_config_mapping",
    "read_embeddings",
    "refine",
    "relative_displacement",
    "resolve_device",
    "write_embeddings",
]
