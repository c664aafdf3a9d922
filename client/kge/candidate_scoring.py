"""Score a batch of queries against a set of candidate entities without materializing (B, K, d).

PyKEEN's ``Model.score_t(hr_batch, tails=...)`` broadcasts ``h``, ``r`` and ``t`` to a
``(batch, candidates, dim)`` tensor before reducing it. Profiling an sLCWA epoch on
FB15k-237-Fed3 client 0 showed that materialization (``add``, ``index_select``, ``neg``, norm and
the embedding scatter in backward) to be ~90 % of the time. For the interactions FedE uses, a
query vector per triple reduces the score to a pairwise distance or a dot product, which
``torch.cdist`` / a matrix product compute without the intermediate tensor:

=========  ==========================================  ==========================================
model      tail candidates ``(h, r, ?)``                head candidates ``(?, r, t)``
=========  ==========================================  ==========================================
TransE     ``-||(h + r) - t||_p``                       ``-||(t - r) - h||_p``
DistMult   ``(h * r) . t``                              ``(r * t) . h``
ComplEx    ``Re(<h r, conj t>)`` = real-view dot        ``Re(<h, conj(conj(r) t)>)``
RotatE     ``-||h o r - t||_2``                         ``-||t o conj(r) - h||_2`` (``|r| = 1``)
=========  ==========================================  ==========================================

Any other interaction falls back to PyKEEN's own ``score_t`` / ``score_h`` (same results, slower).
Equality with PyKEEN's scores is tested in ``tests/test_kge_regimes.py``.

Reciprocal models (``reciprocal-relations``: PyKEEN's inverse triples, ``model.use_inverse_triples``) take the
graph's relation ids here too and score as PyKEEN predicts (``Model.predict_t`` / ``predict_h``): a tail query
``(h, r)`` uses the row PyKEEN's ``relation_inverter`` maps ``r`` to (``2r``), a head query ``(r, t)`` is the tail
query ``(t, r^-1)`` (row ``2r + 1``) over the head candidates, so only the tail scorers above are used for them.
(PyKEEN's ``score_t`` / ``score_h`` / ``score_hrt`` take the model's internal relation rows and map nothing.)
:func:`score_triples` scores the true triples of either side the same way. Equality with ``predict_t`` /
``predict_h`` is tested in ``tests/test_kge_reciprocal.py``.

Fused kernels (:func:`fused_kernel`). Profiling the Fed3 test evaluation with the torch profiler
showed ``torch.cdist(p=1)`` (TransE's L1 distance) at ~1 G pair-dims/s on this CPU: every query
streams the whole candidate table (13k x 128 floats, more than L2) and no AVX-512 reduction is
used. Without gradients (evaluation), large L1 distance matrices are computed instead by a
``torch.compile`` (Inductor, generated C++) kernel of ``|q - c|`` summed over d, on transposed
candidate tiles that fit in L2: ~5x faster per CPU second, and bit-identical to ``cdist`` (each
pair's d terms are summed in the same order). The first call in a process compiles (~25 s on a
loaded machine with a cold cache; ~5-15 s once Inductor's on-disk cache holds the kernels);
without a working C++ compiler it warns once and keeps the eager path. The environment variable
``SIMSKIP_FUSED_KERNELS`` chooses: ``auto`` (default: compiled for large CPU work only),
``always`` (compiled whenever possible; used by the tests) or ``never``.

No deprecated torch API: the kernels use ``torch.compile``, not TorchScript. torch 2.13's
``DeprecationWarning`` for ``torch.jit.script_method`` seen in evaluation logs comes from torch
itself: ``torch.compile``'s Inductor backend imports ``torch._inductor.fx_passes.pre_grad``, which
imports ``torch.fx.experimental.optimization``, which imports ``torch.utils.mkldnn``, whose
``ScriptModule`` classes apply ``@torch.jit.script_method`` when the module is executed. Every
Inductor compile in a process pays that import once; no compile option avoids it, and the eager
alternatives are slower (measured: the eager L1 tile loop 0.59 s, ``cdist`` 0.69 s, the compiled
kernel 0.14 s for 1024 x 14505 x 128, 1 thread). :func:`_import_inductor` therefore imports that
module itself, ignoring exactly that one warning for exactly that import (other warnings, and the
same warning raised by any other code, still show).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from pykeen.models import Model
from pykeen.nn.modules import ComplExInteraction, DistMultInteraction, RotatEInteraction, TransEInteraction

__all__ = [
    "CandidateScorer",
    "FusedKernel",
    "fused_kernel",
    "fused_kernels_mode",
    "has_fast_path",
    "isolate_inductor_cache",
    "l1_distance",
    "score_heads",
    "score_tails",
    "score_triples",
]

logger = logging.getLogger(__name__)

#: (model, query ids (B, 2), candidate ids (K,)) -> scores (B, K)
CandidateScorer = Callable[[Model, torch.Tensor, torch.Tensor], torch.Tensor]


def _entities(model: Model, ids: torch.Tensor) -> torch.Tensor:
    return model.entity_representations[0](indices=ids)


def _relations(model: Model, ids: torch.Tensor) -> torch.Tensor:
    return model.relation_representations[0](indices=ids)


def _real_view(x: torch.Tensor) -> torch.Tensor:
    """Complex (..., d) -> real (..., 2d) interleaved pairs; real tensors pass through."""
    return torch.view_as_real(x).flatten(-2) if x.is_complex() else x


#: Environment variable choosing where fused (compiled) kernels are used: auto | always | never.
FUSED_KERNELS_ENV = "SIMSKIP_FUSED_KERNELS"
#: In ``auto`` mode, the least work (as the caller counts it) worth a compiled kernel by default:
#: below it the eager op takes milliseconds and a first compile (seconds) would never pay off.
AUTO_MIN_WORK = 2**22


def fused_kernels_mode() -> str:
    """The ``SIMSKIP_FUSED_KERNELS`` setting (``auto``, ``always`` or ``never``).

    :raises ValueError: for any other value, naming the variable.
    """
    mode = os.environ.get(FUSED_KERNELS_ENV, "auto").strip().lower() or "auto"
    if mode not in ("auto", "always", "never"):
        raise ValueError(f"{FUSED_KERNELS_ENV}={mode!r}: expected 'auto', 'always' or 'never'")
    return mode


#: torch's own module that Inductor imports (via ``torch._inductor.fx_passes.pre_grad`` and
#: ``torch.fx.experimental.optimization``) and that calls the deprecated ``torch.jit.script_method``
#: when executed (torch 2.13).
INDUCTOR_TORCHSCRIPT_MODULE = "torch.utils.mkldnn"
#: The message of that warning (a regular expression matched at the start, as ``warnings`` does).
SCRIPT_METHOD_DEPRECATION = r"`torch\.jit\.script_method` is deprecated"


#: The environment variable of Inductor's on-disk cache folder (``torch._inductor.runtime.cache_dir_utils``).
INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def isolate_inductor_cache() -> str:
    """Give the CPU capability ATen dispatches to (``torch.backends.cpu.get_cpu_capability()``, which
    ``ATEN_CPU_CAPABILITY`` overrides and ``simskip-sim`` pins to AVX2) its own Inductor cache folder:
    ``<cache>/isa-<capability>`` under the folder ``TORCHINDUCTOR_CACHE_DIR`` names (else Inductor's
    default), set in that variable before this process compiles anything.

    Why: Inductor's on-disk cache is not keyed by that capability. Measured with torch 2.13 on this
    machine (AVX-512): after a native process had compiled the L1 tile kernel, a process under
    ``ATEN_CPU_CAPABILITY=avx2`` loaded it and got L1 distances of ~1e36 (a Fed3 TransE validation MRR
    of 1.05 through ``simskip-sim``); the other way round, a native process loading the AVX2 entry
    corrupted its heap (``free(): invalid next size``). A fresh cache per capability gave ``cdist``'s
    values bit for bit in both.

    :returns: the cache folder this process uses.
    """
    capability = torch.backends.cpu.get_cpu_capability().lower()
    suffix = f"isa-{capability}"
    base = os.environ.get(INDUCTOR_CACHE_ENV)
    if base is None:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        base = default_cache_dir()
    folder = base if os.path.basename(os.path.normpath(base)) == suffix else os.path.join(base, suffix)
    os.environ[INDUCTOR_CACHE_ENV] = folder
    return folder


def _import_inductor() -> Any:
    """Import Inductor's config and :data:`INDUCTOR_TORCHSCRIPT_MODULE` (once per process), with
    torch's :data:`SCRIPT_METHOD_DEPRECATION` warning ignored for that import only; the filter is
    restored afterwards, so the same warning from any other code still shows. Before it, the process's
    Inductor cache is made its CPU capability's own (:func:`isolate_inductor_cache`).

    :returns: ``torch._inductor.config``.
    """
    isolate_inductor_cache()
    import torch._inductor.config as inductor_config  # heavy (inductor, ~0.8 s): compiled kernels only

    if INDUCTOR_TORCHSCRIPT_MODULE not in sys.modules:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=SCRIPT_METHOD_DEPRECATION, category=DeprecationWarning)
            importlib.import_module(INDUCTOR_TORCHSCRIPT_MODULE)
    return inductor_config


class _MismatchError(RuntimeError):
    """A compiled kernel's result differs from its eager version's."""


class FusedKernel:
    """An eager tensor function and its ``torch.compile`` version, used where it pays off.

    The compiled version runs only on CPU tensors without autograd (evaluation), when
    :func:`fused_kernels_mode` allows it and the caller's ``work`` is large enough in ``auto``
    mode. If compiling fails (no C++ compiler, an unsupported torch build), or the compiled version's
    first result differs from the eager version's (checked once per process), it warns once and the
    eager function serves every later call: results are the same up to float summation order.

    :param function: the function to compile; it must be traceable by ``torch.compile``.
    :param eager: what runs instead when not compiled (default ``function`` itself), e.g. an op
        that computes the same without the intermediate tensor ``function`` materializes eagerly.
    :param min_work: in ``auto`` mode, the least ``work`` of a call that uses the compiled version.
    """

    def __init__(
        self, function: Callable[..., Any], eager: Callable[..., Any] | None = None, min_work: int = AUTO_MIN_WORK
    ) -> None:
        self.function = function
        self.eager = eager or function
        self.min_work = min_work
        self._compiled: Callable[..., Any] | None = None
        self._failed = False
        self._verified = False

    def _verify(self, tensors: tuple[torch.Tensor, ...], result: torch.Tensor) -> None:
        """Compare the compiled version's first result with the eager version's (once per process): a
        kernel that computes something else (a miscompile, or a cache entry built for another CPU
        capability, :func:`isolate_inductor_cache`) is caught before its numbers are used.

        :raises _MismatchError: where they differ beyond float summation order.
        """
        expected = self.eager(*tensors)
        got, want = (list(x) if isinstance(x, tuple | list) else [x] for x in (result, expected))
        for a, b in zip(got, want, strict=True):
            same = a.shape == b.shape and torch.allclose(a.double(), b.double(), rtol=1e-4, atol=1e-4, equal_nan=True)
            if not same:
                difference = (a.double() - b.double()).abs().max().item() if a.shape == b.shape else "shapes differ"
                raise _MismatchError(
                    f"the compiled {getattr(self.function, '__name__', self.function)} differs from its eager version "
                    f"(max abs difference {difference}; Inductor cache {os.environ.get(INDUCTOR_CACHE_ENV)})"
                )
        self._verified = True

    def _use_compiled(self, tensors: tuple[torch.Tensor, ...], work: int) -> bool:
        mode = fused_kernels_mode()
        if mode == "never" or self._failed or torch.is_grad_enabled():
            return False
        if any(t.device.type != "cpu" or t.requires_grad for t in tensors):
            return False
        return mode == "always" or work >= self.min_work

    def __call__(self, *tensors: torch.Tensor, work: int = 0) -> Any:
        """Apply the function; ``work`` is the caller's size estimate for ``auto`` mode."""
        if not self._use_compiled(tensors, work):
            return self.eager(*tensors)
        try:
            if self._compiled is None:
                inductor_config = _import_inductor()
                # compile in this process: no pool of compile-worker processes left behind
                inductor_config.compile_threads = 1
                self._compiled = torch.compile(self.function, dynamic=True)
            result = self._compiled(*tensors)
            if not self._verified:
                self._verify(tensors, result)
            return result
        except _MismatchError as error:
            self._failed = True
            logger.warning("%s; using the eager version", error)
            return self.eager(*tensors)
        except Exception as error:  # noqa: BLE001 - any compiler failure falls back to eager
            self._failed = True
            logger.warning(
                "torch.compile of %s failed (%s: %s); using the eager version",
                getattr(self.function, "__name__", self.function),
                type(error).__name__,
                error,
            )
            return self.eager(*tensors)


def fused_kernel(
    eager: Callable[..., Any] | None = None, min_work: int = AUTO_MIN_WORK
) -> Callable[[Callable[..., Any]], FusedKernel]:
    """Decorator form of :class:`FusedKernel`: ``@fused_kernel(eager=..., min_work=...)``."""
    return lambda function: FusedKernel(function, eager, min_work)


# work = B x K x d pair-dims; 2**24 is ~15 ms of cdist
@fused_kernel(eager=lambda query, candidates_t: torch.cdist(query, candidates_t.T, p=1.0), min_work=2**24)
def _l1_tile(query: torch.Tensor, candidates_t: torch.Tensor) -> torch.Tensor:
    # candidates transposed (d, K): the compiled loop vectorizes over candidates and sums the d
    # terms of each pair in order, as cdist does (bit-identical results), without the (B, d, K)
    # intermediate the eager broadcast would materialize (hence cdist as the eager version)
    return (query[:, :, None] - candidates_t[None, :, :]).abs().sum(1)


#: Candidates per L1 tile: 1024 x 128 floats (512 KiB) stay in L2 while every query uses them.
L1_TILE_ROWS = 1024


def l1_distance(query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Pairwise L1 distances ``sum_d |query_i,d - candidate_j,d|``.

    :param query: shape (B, d), real.
    :param candidates: shape (K, d), real.
    :returns: shape (B, K), equal to ``torch.cdist(query, candidates, p=1)``.
    """
    work = query.shape[0] * candidates.shape[0] * query.shape[1]
    if not _l1_tile._use_compiled((query, candidates), work):
        return torch.cdist(query, candidates, p=1.0)
    out = torch.empty(query.shape[0], candidates.shape[0], dtype=query.dtype, device=query.device)
    for begin in range(0, candidates.shape[0], L1_TILE_ROWS):
        tile = candidates[begin : begin + L1_TILE_ROWS].T.contiguous()
        out[:, begin : begin + L1_TILE_ROWS] = _l1_tile(query, tile, work=work)
    return out


def _norm_scores(model: Model, query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """``-||query_i - candidate_j||_p`` (``-sum |.|^p`` with ``power_norm``), shape (B, K)."""
    p = float(model.interaction.p)
    query, candidates = _real_view(query).contiguous(), _real_view(candidates).contiguous()
    if p == 1.0:
        distance = l1_distance(query, candidates)
    else:
        distance = torch.cdist(query, candidates, p=p)
    if getattr(model.interaction, "power_norm", False):
        distance = distance.pow(p)
    return -distance if distance.requires_grad else distance.neg_()


def _dot_scores(query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """``Re(<query_i, conj(candidate_j)>)`` = real-view dot product, shape (B, K)."""
    return _real_view(query) @ _real_view(candidates).transpose(0, 1)


def _transe_tails(model: Model, hr: torch.Tensor, tails: torch.Tensor) -> torch.Tensor:
    query = _entities(model, hr[:, 0]) + _relations(model, hr[:, 1])
    return _norm_scores(model, query, _entities(model, tails))


def _transe_heads(model: Model, rt: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
    query = _entities(model, rt[:, 1]) - _relations(model, rt[:, 0])
    return _norm_scores(model, query, _entities(model, heads))


def _distmult_tails(model: Model, hr: torch.Tensor, tails: torch.Tensor) -> torch.Tensor:
    return _dot_scores(_entities(model, hr[:, 0]) * _relations(model, hr[:, 1]), _entities(model, tails))


def _distmult_heads(model: Model, rt: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
    return _dot_scores(_relations(model, rt[:, 0]) * _entities(model, rt[:, 1]), _entities(model, heads))


def _complex_tails(model: Model, hr: torch.Tensor, tails: torch.Tensor) -> torch.Tensor:
    return _dot_scores(_entities(model, hr[:, 0]) * _relations(model, hr[:, 1]), _entities(model, tails))


def _complex_heads(model: Model, rt: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
    # Re(sum h r conj(t)) = Re(sum h conj(conj(r) t))
    query = torch.conj(_relations(model, rt[:, 0])) * _entities(model, rt[:, 1])
    return _dot_scores(query, _entities(model, heads))


def _rotate_tails(model: Model, hr: torch.Tensor, tails: torch.Tensor) -> torch.Tensor:
    query = _entities(model, hr[:, 0]) * _relations(model, hr[:, 1])
    return _norm_scores(model, query, _entities(model, tails))


def _rotate_heads(model: Model, rt: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
    # |r| = 1 (RotatE's relation constrainer): ||h r - t|| = ||h - t conj(r)||, as PyKEEN also uses
    query = _entities(model, rt[:, 1]) * torch.conj(_relations(model, rt[:, 0]))
    return _norm_scores(model, query, _entities(model, heads))


#: Fast (tail scorer, head scorer) per PyKEEN interaction class.
FAST_SCORERS: Mapping[type, tuple[CandidateScorer, CandidateScorer]] = {
    TransEInteraction: (_transe_tails, _transe_heads),
    DistMultInteraction: (_distmult_tails, _distmult_heads),
    ComplExInteraction: (_complex_tails, _complex_heads),
    RotatEInteraction: (_rotate_tails, _rotate_heads),
}


def has_fast_path(model: Model) -> bool:
    """Whether ``model``'s interaction has a fast scorer here (else PyKEEN's scoring is used)."""
    return type(getattr(model, "interaction", None)) in FAST_SCORERS and len(model.entity_representations) == 1


def _reciprocal(model: Model) -> bool:
    """Whether ``model`` was built on inverse triples (PyKEEN's ``use_inverse_triples``)."""
    return bool(getattr(model, "use_inverse_triples", False))


def _forward_queries(model: Model, batch: torch.Tensor, index: int) -> torch.Tensor:
    """``batch`` with its relation column (``index``) in the model's forward rows (a reciprocal model's
    ``relation_inverter`` map, PyKEEN's ``Model._prepare_batch``); the batch itself otherwise."""
    return model.relation_inverter.map(batch=batch, index=index) if _reciprocal(model) else batch


def _inverse_tail_queries(model: Model, rt_batch: torch.Tensor) -> torch.Tensor:
    """``(r, t)`` -> ``(t, r^-1)`` in a reciprocal model's rows: what PyKEEN's ``predict_h`` hands to
    ``score_t`` (``_prepare_batch`` then ``_prepare_inverse_batch``)."""
    return model.relation_inverter.map(batch=rt_batch, index=0, invert=True).flip(1)


def _score_tails_as_stored(model: Model, hr_batch: torch.Tensor, tails: torch.Tensor) -> torch.Tensor:
    """Tail scores of ``(h, r)`` rows whose ``r`` is already the model's relation row."""
    if has_fast_path(model):
        return FAST_SCORERS[type(model.interaction)][0](model, hr_batch, tails)
    return model.score_t(hr_batch=hr_batch, tails=tails)


def score_tails(model: Model, hr_batch: torch.Tensor, tails: torch.Tensor) -> torch.Tensor:
    """Scores of ``(h, r, t_j)`` for every row ``(h, r)`` and candidate ``t_j``.

    :param model: a PyKEEN model.
    :param hr_batch: shape (B, 2), head and relation ids (the graph's relation ids, also for a reciprocal model).
    :param tails: shape (K,), candidate tail ids.
    :returns: shape (B, K), equal to ``model.score_t(hr_batch, tails=tails)``; for a reciprocal model to
        ``model.predict_t(hr_batch, tails=tails)`` (the forward rows).
    """
    return _score_tails_as_stored(model, _forward_queries(model, hr_batch, 1), tails)


def score_heads(model: Model, rt_batch: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
    """Scores of ``(h_j, r, t)`` for every row ``(r, t)`` and candidate ``h_j``.

    :param model: a PyKEEN model.
    :param rt_batch: shape (B, 2), relation and tail ids (the graph's relation ids, also for a reciprocal model).
    :param heads: shape (K,), candidate head ids.
    :returns: shape (B, K), equal to ``model.score_h(rt_batch, heads=heads)``; for a reciprocal model to
        ``model.predict_h(rt_batch, heads=heads)``: the tails ``h_j`` of ``(t, r^-1, ?)``.
    """
    if _reciprocal(model):
        return _score_tails_as_stored(model, _inverse_tail_queries(model, rt_batch), heads)
    if has_fast_path(model):
        return FAST_SCORERS[type(model.interaction)][1](model, rt_batch, heads)
    return model.score_h(rt_batch=rt_batch, heads=heads)


def score_triples(model: Model, hrt_batch: torch.Tensor, target: str = "tail") -> torch.Tensor:
    """Scores of the triples ``(h, r, t)`` as the ranking of ``target`` scores them.

    :param model: a PyKEEN model.
    :param hrt_batch: shape (B, 3), the graph's ids.
    :param target: ``"tail"`` or ``"head"``: the side whose candidates the score is compared with.
    :returns: shape (B, 1): ``model.score_hrt(hrt_batch)`` for a model without inverse triples (either side);
        for a reciprocal model the forward triple ``(h, r, t)`` for ``tail`` (``model.predict_hrt``) and the
        inverse triple ``(t, r^-1, h)`` for ``head`` (the true head's entry of :func:`score_heads`).
    :raises ValueError: for another ``target``.
    """
    if target not in ("head", "tail"):
        raise ValueError(f"target must be 'head' or 'tail', got {target!r}")
    if not _reciprocal(model):
        return model.score_hrt(hrt_batch)
    forward = model.relation_inverter.map(batch=hrt_batch, index=1, invert=target == "head")
    return model.score_hrt(forward.flip(1) if target == "head" else forward)
