"""Attribute decoders: one small interface for reading attributes off binary codes.

A decoder is fitted on a method's *training* codes and identity attributes, then, for any codes, gives
a score to every attribute value (:meth:`Decoder.value_scores`, (n, V) over the schema's values in
group order). Everything else is built on those scores:

* **search by description** (:func:`hashbench.semantic.evaluate_attribute_queries`): a description
  ``{group: value}`` scores a code by the *sum* of its values' columns (higher: fits better), so one
  matrix product serves every description;
* **attribute prediction** (:meth:`Decoder.predict`): per group, the value of highest score; with
  ``balanced=True`` the training prior is divided out (the Bayes decision for *balanced* accuracy);
* **photo + description** (:meth:`Decoder.description_cost`): a cost >= 0 of a code for a description
  (0: fits best), added to the photo's Hamming distance with a weight ``alpha``.

Decoders (``name`` is what the ``decoder`` column of ``attribute_queries.csv`` says):

``naive-bayes``  :class:`hashbench.semantic.AttributeDecoder` (naive Bayes over bits; the original
                 decoder of the benchmark, unchanged). Its scores are log-likelihood *ratios*; it is not
                 calibrated when a group is imbalanced (bits are far from independent given a value,
                 so the evidence of hundreds of bits swamps the prior: on Market-1501 its accuracy is
                 below always-majority for age, sleeve, hat, handbag and bag).
``logistic``     :class:`LogisticDecoder`: per group, an L2-regularised multinomial logistic regression
                 on the bits (scikit-learn). Its scores are log-posteriors ``log P(value | code)``, so a
                 description's score is its joint log-likelihood under independent groups.
a method's own   :meth:`hashbench.method.HashMethod.decoder` may return one (DeepSSH: the fixed-codeword
                 readout of its semantic segment, ``deepssh-readout``).

Third-party decoders register like methods, through the ``hashbench_register_decoders`` hook
(:mod:`hashbench.hookspecs`); ``hashbench run --decoders a,b`` picks the generic ones a run evaluates.
A decoder class takes the :class:`~hashbench.data.AttributeSchema` as its first argument, then keyword
hyperparameters; fitting is deterministic (no randomness, or a fixed ``seed``).
"""

from __future__ import annotations

import logging
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import numpy as np

from .data import AttributeSchema
from .errors import HashbenchError
from .hookspecs import hookimpl
from .metrics import default_threads

log = logging.getLogger(__name__)

DEFAULT_DECODERS = ("naive-bayes", "logistic")  # the generic decoders a run evaluates by default


def check_codes(codes: np.ndarray, name: str = "codes", bits: int | None = None) -> np.ndarray:
    """Validate (n, bits) 0/1 codes; returns a uint8 array."""
    a = np.asarray(codes)
    if a.ndim != 2:
        raise HashbenchError(f"{name} must be an (n, bits) array of 0/1, got shape {a.shape}")
    if a.dtype != bool and not np.issubdtype(a.dtype, np.integer):
        raise HashbenchError(f"{name} must be 0/1 integers or bool, got dtype {a.dtype}")
    if a.size and a.dtype != bool and (a.min() < 0 or a.max() > 1):
        raise HashbenchError(f"{name} must hold only 0 and 1 (unpacked codes)")
    if bits is not None and a.shape[1] != bits:
        raise HashbenchError(f"{name} have {a.shape[1]} bits but the decoder was fitted on {bits}-bit codes")
    return a.astype(np.uint8, copy=False)


def group_log_softmax(logits: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Log-softmax of (n, V) ``logits`` within each group's columns ``offsets[g]:offsets[g+1]``."""
    out = np.empty_like(logits, dtype=np.float64)
    for a, b in zip(offsets[:-1], offsets[1:], strict=True):
        x = logits[:, a:b].astype(np.float64)
        m = x.max(1, keepdims=True)
        out[:, a:b] = x - (m + np.log(np.exp(x - m).sum(1, keepdims=True)))
    return out


class Decoder(ABC):
    """The decoder interface (see the module docstring).

    Subclasses set ``name`` and ``description`` and implement :meth:`fit` and :meth:`value_scores`.
    Common state: ``schema``, ``group_sizes`` (G,), ``offsets_`` (G+1,) (the columns of group ``g`` in
    (.., V) arrays are ``offsets_[g]:offsets_[g+1]``); after fit, ``bits_`` and ``log_prior_`` (V,) the
    Laplace-smoothed log training frequency of each value within its group.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""

    def __init__(self, schema: AttributeSchema) -> None:
        self._setup(schema)

    def _setup(self, schema: AttributeSchema) -> None:
        if not isinstance(schema, AttributeSchema):
            raise HashbenchError(
                f"{type(self).__name__} needs an AttributeSchema, got {type(schema).__name__}"
            )
        self.schema = schema
        self.group_sizes = np.array([len(g.values) for g in schema.groups], dtype=np.int64)
        self.offsets_ = np.concatenate([[0], np.cumsum(self.group_sizes)]).astype(np.int64)

    # ---------------------------------------------------------------------------------------- contract

    @abstractmethod
    def fit(self, codes: np.ndarray, attributes: np.ndarray) -> Decoder:
        """Learn from training ``codes`` (n, B) 0/1 and identity ``attributes`` (n, G) (-1 unknown)."""

    @abstractmethod
    def value_scores(self, codes: np.ndarray) -> np.ndarray:
        """(n, V) float64: how well each code fits each attribute value (higher: better). A description
        scores a code by the sum of its values' columns; a constant per column does not change a ranking."""

    def predict(self, codes: np.ndarray, balanced: bool = False) -> np.ndarray:
        """The value of highest score in each group, (n, G) int64; ``balanced``: scores minus
        ``log_prior_`` (for log-posterior scores, the decision that maximises balanced accuracy)."""
        scores = self.value_scores(codes)
        if balanced:
            scores = scores - self.log_prior_[None, :]
        out = np.empty((len(scores), len(self.schema)), dtype=np.int64)
        for g in range(len(self.schema)):
            out[:, g] = scores[:, self.offsets_[g] : self.offsets_[g + 1]].argmax(1)
        return out

    def description_cost(
        self, picks: np.ndarray, codes: np.ndarray, scores: np.ndarray | None = None
    ) -> np.ndarray:
        """(q, n) cost >= 0 of each code for each description (0: fits best), for photo + description.

        ``picks`` (q, V) 0/1: the values of each description; ``scores``: :meth:`value_scores` of
        ``codes`` when already computed. The default, for decoders whose scores are log-posteriors: the
        mean negative log-likelihood per queried value (nats)."""
        picks = np.asarray(picks, dtype=np.float64)
        scores = self.value_scores(codes) if scores is None else scores
        nll = -(picks @ scores.T)
        return nll / np.maximum(picks.sum(1, keepdims=True), 1.0)

    # ------------------------------------------------------------------------------------ descriptions

    def query_rows(self, query: str | Mapping) -> np.ndarray:
        """Columns (value indices) of a description: ``{group index: value code}`` (as
        :meth:`AttributeSchema.parse` returns), ``{name: value label}``, or ``"name=value,..."``."""
        if isinstance(query, str):
            query = self.schema.parse(query)
        if not isinstance(query, Mapping):
            raise HashbenchError(
                f"a description is a mapping {{group: value}} or 'name=value,...', got {query!r}"
            )
        if not query:
            raise HashbenchError(
                f"empty description: give at least one name=value; valid names: {', '.join(self.schema.names)}"
            )
        rows = []
        for key, value in query.items():
            g = self.schema.index(key) if isinstance(key, str) else int(key)
            if not 0 <= g < len(self.schema):
                raise HashbenchError(
                    f"attribute group index {key!r} out of range; valid: 0..{len(self.schema) - 1} "
                    f"({', '.join(self.schema.names)})"
                )
            group = self.schema.groups[g]
            v = group.code(value) if isinstance(value, str) else int(value)
            if not 0 <= v < len(group.values):
                raise HashbenchError(
                    f"attribute {group.name!r}: value code {value!r} out of range; valid: "
                    + ", ".join(f"{i}={label}" for i, label in enumerate(group.values))
                )
            rows.append(int(self.offsets_[g]) + v)
        return np.asarray(rows, dtype=np.int64)

    def score(self, query: str | Mapping, codes: np.ndarray) -> np.ndarray:
        """(n,) score of each code for one description (the sum of its values' columns)."""
        return self.value_scores(codes)[:, self.query_rows(query)].sum(1)

    def cost(self, query: str | Mapping, codes: np.ndarray, scores: np.ndarray | None = None) -> np.ndarray:
        """(n,) :meth:`description_cost` of each code for one description (``scores``: as there)."""
        picks = np.zeros((1, int(self.offsets_[-1])))
        picks[0, self.query_rows(query)] = 1.0
        return self.description_cost(picks, codes, scores)[0]

    # -------------------------------------------------------------------------------------- helpers

    def _training(self, codes: np.ndarray, attributes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The training ``codes`` (n, B) and ``attributes`` (n, G) of :meth:`fit`, validated; empty ones
        are a one-line error."""
        codes = check_codes(codes, "training codes")
        attributes = self._attributes(attributes, len(codes), "training attributes")
        n, bits = codes.shape
        if n == 0 or bits == 0:
            raise HashbenchError(f"training codes are empty ({n} x {bits}); nothing to fit")
        return codes, attributes

    def _attributes(self, attributes, n: int, name: str) -> np.ndarray:
        a = np.asarray(attributes)
        if a.ndim != 2 or a.shape != (n, len(self.schema)):
            raise HashbenchError(
                f"{name} have shape {a.shape}; expected ({n}, {len(self.schema)}): one row per code, "
                f"one column per group ({', '.join(self.schema.names)})"
            )
        if a.size and not np.issubdtype(a.dtype, np.integer):
            raise HashbenchError(f"{name} must be integer value codes (-1 unknown), got dtype {a.dtype}")
        a = a.astype(np.int64)
        bad = (a < -1) | (a >= self.group_sizes[None, :])
        if bad.any():
            i, g = map(int, np.argwhere(bad)[0])
            group = self.schema.groups[g]
            raise HashbenchError(
                f"{name}: value code {a[i, g]} of group {group.name!r} is out of range "
                f"(-1 unknown, 0..{len(group.values) - 1} for {', '.join(group.values)})"
            )
        return a

    def _onehot(self, attributes: np.ndarray) -> np.ndarray:
        n = len(attributes)
        out = np.zeros((n, int(self.offsets_[-1])), dtype=np.float64)
        for g in range(len(self.schema)):
            known = attributes[:, g] >= 0
            out[np.flatnonzero(known), self.offsets_[g] + attributes[known, g]] = 1.0
        return out

    def _fit_prior(self, attributes: np.ndarray) -> np.ndarray:
        """Per value, training images (V,); sets ``log_prior_``: log (count + 1) / (known + k) per group."""
        counts = self._onehot(attributes).sum(0)
        known = np.add.reduceat(counts, self.offsets_[:-1]) if len(counts) else np.zeros(0)
        per_group = np.repeat(known, self.group_sizes)
        self.log_prior_ = np.log((counts + 1.0) / (per_group + np.repeat(self.group_sizes, self.group_sizes)))
        return counts

    def _check_fitted(self) -> None:
        if not hasattr(self, "bits_"):
            raise HashbenchError(f"{type(self).__name__} is not fitted: call fit(codes, attributes) first")


class LogisticDecoder(Decoder):
    """Per attribute group, a multinomial logistic regression on the bits (the calibrated decoder).

    For each group, ``P(value | code) = softmax(W x + b)`` with ``x = 2 c - 1`` (bits as +-1), fitted by
    scikit-learn's ``LogisticRegression`` (L-BFGS, L2 penalty ``1 / C``, no class weights) on the
    training images whose value is known. Unweighted, so the posteriors are calibrated to the training
    prior and a description's joint log-likelihood ``sum_g log P(v_g | code)`` (groups independent given
    the code) ranks the gallery; the *prior is corrected* where a decision should not favour frequent
    values: ``predict(codes, balanced=True)`` picks ``argmax P(v | code) / P(v)``, the Bayes decision for
    balanced accuracy, and ``predict(codes)`` the plain ``argmax P(v | code)`` (for accuracy).

    Rare values: a value with no training image gets the constant ``log 1 / (known + k)`` (it is never
    predicted and weighs a description down by a fixed amount); a group with a single known value, or
    none, is constant (its Laplace-smoothed training frequencies). The regression is deterministic
    (L-BFGS from zero), so fitting is too.

    Parameters
    ----------
    C : float
        Inverse L2 strength (scikit-learn's ``C``; default 0.05). Not tuned yet: a strong penalty because
        the training codes of a method are codes of the identities it was fitted on, and a weak one
        learns their identities rather than their attributes. Tune it on held-out ids
        (``--holdout`` runs with ``--decoder-param logistic.C=...``), never on the test split.
    max_iter : int
        L-BFGS iterations per group (default 300).

    Fitted: ``bits_``, ``coef_`` (V, B), ``intercept_`` (V,), ``present_`` (V,) bool (values with training
    images), ``log_prior_`` (V,).
    """

    name = "logistic"
    description = "per attribute group, an L2 logistic regression on the bits (calibrated, prior-corrected)"

    def __init__(self, schema: AttributeSchema, C: float = 0.05, max_iter: int = 300) -> None:
        super().__init__(schema)
        if not (C > 0 and math.isfinite(C)):
            raise HashbenchError(f"logistic decoder C={C!r}: expected a number > 0")
        if int(max_iter) < 1:
            raise HashbenchError(f"logistic decoder max_iter={max_iter!r}: expected >= 1")
        self.C = float(C)
        self.max_iter = int(max_iter)

    def fit(self, codes: np.ndarray, attributes: np.ndarray) -> LogisticDecoder:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
        from threadpoolctl import threadpool_limits

        codes, attributes = self._training(codes, attributes)
        n, bits = codes.shape
        counts = self._fit_prior(attributes)
        x = codes.astype(np.float32) * 2.0 - 1.0  # float32: half the time of L-BFGS in float64
        V = int(self.offsets_[-1])
        coef, intercept = np.zeros((V, bits)), np.zeros(V)
        present = counts > 0
        jobs = []  # (group index, its known rows, their values): the groups with something to learn
        for g in range(len(self.schema.groups)):
            a, k = int(self.offsets_[g]), int(self.group_sizes[g])
            known = attributes[:, g] >= 0
            y = attributes[known, g]
            if len(np.unique(y)) < 2:  # nothing to discriminate: the smoothed training frequencies
                intercept[a : a + k] = self.log_prior_[a : a + k]
                present[a : a + k] = True
                continue
            jobs.append((g, known, y))

        def fit_group(job):
            g, known, y = job
            clf = LogisticRegression(C=self.C, max_iter=self.max_iter, tol=1e-4)
            return clf.fit(x[known], y)

        # one BLAS/OpenMP thread per fit: on a loaded 2-core machine scikit-learn's threaded loss ran 25x
        # slower (82 L-BFGS iterations, 67 s against 2.7 s on Market-1501's 128-bit SDH codes); the
        # groups' fits, independent and deterministic, run side by side instead, one per core (the same
        # coefficients as one after another; the 2048-bit codes of a Market-1501 cell: 39.2 s -> 29.2 s on 2 cores)
        with threadpool_limits(1), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # counted below, from n_iter_
            with ThreadPoolExecutor(max(1, min(default_threads(), len(jobs)))) as pool:
                fitted = list(pool.map(fit_group, jobs))
        unconverged = []
        for (g, known, _), clf in zip(jobs, fitted, strict=True):
            a, k = int(self.offsets_[g]), int(self.group_sizes[g])
            if int(np.max(clf.n_iter_)) >= self.max_iter:
                unconverged.append(self.schema.groups[g].name)
            cols = a + clf.classes_.astype(np.int64)
            if len(clf.classes_) == 2:  # scikit-learn's binary form: one logit, for the second class
                coef[cols[1]], intercept[cols[1]] = clf.coef_[0], clf.intercept_[0]
            else:
                coef[cols], intercept[cols] = clf.coef_, clf.intercept_
            absent = np.setdiff1d(np.arange(a, a + k), cols)
            intercept[absent] = math.log(1.0 / (int(known.sum()) + k))
        if unconverged:
            log.info(
                "logistic decoder: L-BFGS stopped at max_iter=%d for %s",
                self.max_iter,
                ", ".join(unconverged),
            )
        self.bits_ = bits
        self.coef_, self.intercept_, self.present_ = coef, intercept, present
        return self

    def value_scores(self, codes: np.ndarray) -> np.ndarray:
        """(n, V) ``log P(value | code)`` per group (absent values: their constant, see the class)."""
        self._check_fitted()
        x = check_codes(codes, bits=self.bits_).astype(np.float64) * 2.0 - 1.0
        logits = x @ self.coef_.T + self.intercept_[None, :]
        out = np.empty_like(logits)
        for a, b in zip(self.offsets_[:-1], self.offsets_[1:], strict=True):
            p = self.present_[a:b]
            out[:, a:b][:, ~p] = self.intercept_[a:b][~p][None, :]
            block = logits[:, a:b][:, p]
            m = block.max(1, keepdims=True)
            cols = np.arange(a, b)[p]
            out[:, cols] = block - (m + np.log(np.exp(block - m).sum(1, keepdims=True)))
        return out

    def predict(self, codes: np.ndarray, balanced: bool = False) -> np.ndarray:
        scores = self.value_scores(codes)
        if balanced:
            scores = scores - self.log_prior_[None, :]
        scores = np.where(self.present_[None, :], scores, -np.inf)  # an unseen value is never predicted
        out = np.empty((len(scores), len(self.schema)), dtype=np.int64)
        for g in range(len(self.schema)):
            out[:, g] = scores[:, self.offsets_[g] : self.offsets_[g + 1]].argmax(1)
        return out


def builtin_decoders() -> list[type[Decoder]]:
    """The generic decoders hashbench ships."""
    from .semantic import AttributeDecoder

    return [AttributeDecoder, LogisticDecoder]


@hookimpl
def hashbench_register_decoders() -> list[type]:
    return builtin_decoders()


def make_decoders(
    names, schema: AttributeSchema, registry=None, params: dict[str, dict] | None = None
) -> list[Decoder]:
    """Instances of the named generic decoders (``--decoders``), in order, with their hyperparameters
    (``--decoder-param NAME.KEY=VALUE``, ``params[name]``); a decoder with non-default ones is named
    ``name(key=value,...)`` in the rows, so that they never pass for the default. Unknown names and
    keys: one line naming the valid ones (``registry``: the loaded plugins; default: hashbench's own)."""
    import inspect

    params = params or {}
    if registry is None:
        table = {k.name: k for k in builtin_decoders()}
        for name in names:
            if name not in table:
                valid = ", ".join(sorted(table))
                raise HashbenchError(f"--decoders: unknown decoder {name!r}; valid: {valid}")
        pick = table.__getitem__
    else:
        pick = registry.decoder
    for name in params:
        if name not in names:
            raise HashbenchError(
                f"--decoder-param {name}.*: {name!r} is not among --decoders ({', '.join(names)})"
            )
    out = []
    for name in names:
        klass = pick(name)
        given = dict(params.get(name, {}))
        valid = [p for p in inspect.signature(klass.__init__).parameters if p not in ("self", "schema")]
        bad = [k for k in given if k not in valid]
        if bad:
            raise HashbenchError(
                f"--decoder-param {name}.{bad[0]}: unknown; valid: {', '.join(valid) or '(none)'}"
            )
        decoder = klass(schema, **given)
        if given:
            decoder.name = f"{name}({','.join(f'{k}={v}' for k, v in sorted(given.items()))})"
        out.append(decoder)
    return out


__all__ = ["DEFAULT_DECODERS", "Decoder", "LogisticDecoder", "builtin_decoders", "make_decoders"]
