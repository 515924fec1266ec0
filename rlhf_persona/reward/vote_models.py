"""Global, segment and user levels on pointwise votes: each level = the one above + shrunk terms.

    g = GlobalVoteModel().fit(train, item_x, folds)            # text logistic + item intercepts
    s = SegmentVoteModel(g).fit(train, seg_of_user, item_x, folds)  # + segment deviations
    u = UserFactorModel(s).fit(train, item_x)                  # + b_u + p_u · q_i (low rank)
    u.logit(user_idx, item_idx)                                # log-odds the user agrees

* **global** ``z_g(i) = w · e_i + a_i``: logistic regression on the item's text embedding ``e_i``
  (its L2 strength picked by user-fold cross-validation), plus an item intercept ``a_i`` shrunk
  toward the text prediction (strength also cross-validated): a known statement's popularity is
  learned, an unseen one is scored from its text alone.
* **segment** ``z_s(i) = z_g(i) + v_s · e'_i + d_{s,i}``: per segment a text deviation on the
  embedding's principal components and a per-(segment, item) deviation, both shrunk toward the
  global level (cross-validated). A user is not pinned to one segment: their prediction is the
  mixture ``Σ_s P(s | their votes) σ(z_s(i))`` (prior = segment shares), so a user with one or
  two votes gets the population's mixture, not a segment guessed from those votes.
  ``SegmentMixture`` mixes the segment levels of several segmentations (k), weights stacked on
  validation votes.
* **user** ``z_u(i) = z_s(i) + b_u + p_u · q_i``: a per-user intercept and ``rank`` per-user
  weights over a basis of item factors shared by everybody (LoRe-style: the top singular
  vectors of the users × items residual of the segment level, which pools all users' votes).
  The Gaussian priors on ``b_u, p_u`` (strengths picked on validation votes) centre each user on
  their segment; a user with few votes stays near it. Unseen items get ``q_i`` from a ridge map
  of their text embedding. ``place`` fits new users from a few votes, the basis fixed. (Free
  item factors fit by alternating MAP steps collapse to zero under the priors the validation
  picks on Polis-sized data; a fixed shared basis does not.)

Every fit is a batched Newton solve over groups (users, items, cells) of the vote rows
(``fit_groups``): memory linear in the votes, no pairs.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import Ridge

# Text logistic: inverse L2 strength (sklearn's C), picked by CV.
C_GRID = (1e-4, 3e-4, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
SHRINK_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)  # prior precision of intercepts, deviations
USER_GRID = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)  # prior precision of user factors
BIAS_GRID = (1.0, 10.0, 100.0)  # prior precision of per-user intercepts
VALIDATION = 0.15  # share of training votes held out to pick user-level settings


def softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def prob_logit(p: np.ndarray) -> np.ndarray:
    """Log-odds of probabilities (clipped away from 0 and 1)."""
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return np.log(p) - np.log1p(-p)


def group_sum(group: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """Per-group column sums of ``values`` rows; ``group`` must be sorted (contiguous groups)."""
    out = np.zeros((n_groups,) + values.shape[1:])
    if not len(group):
        return out
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    np.add.at(out, group[starts], np.add.reduceat(values, starts, axis=0))
    return out


def fit_groups(group: np.ndarray, x: np.ndarray, y: np.ndarray, offset: np.ndarray,
               lam, n_groups: int, theta0: np.ndarray | None = None, iters: int = 10,
               weight: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """Per group g, the MAP ``θ_g`` of ``P(y=+1) = σ(offset + θ_g · x)`` under N(0, 1/λ) priors,
    all groups at once by Newton steps with a per-group halving line search.

    ``x``: (n, d) rows; ``lam``: scalar or (d,) prior precisions; ``weight``: per-row
    log-likelihood weights (vote counts of aggregated rows); returns (n_groups, d).
    """
    n, d = x.shape
    lam = np.broadcast_to(np.asarray(lam, dtype=float), (d,))
    theta = np.zeros((n_groups, d)) if theta0 is None else theta0.copy()
    if n == 0:
        return theta
    order = np.argsort(group, kind="stable")  # contiguous groups: sums by reduceat
    group, x, y, offset = group[order], x[order], y[order], offset[order]
    w = np.ones(n) if weight is None else np.asarray(weight, dtype=float)[order]
    bounds = np.r_[np.flatnonzero(np.r_[True, group[1:] != group[:-1]]), n]
    present = group[bounds[:-1]].tolist()
    bounds = bounds.tolist()

    def losses(t):
        m = y * (offset + np.einsum("ij,ij->i", x, t[group]))
        return group_sum(group, w * softplus(-m), n_groups) + 0.5 * (t * t) @ lam, m

    cur, m = losses(theta)
    for _ in range(iters):
        s = sigmoid(-m)
        grad = -group_sum(group, x * (w * y * s)[:, None], n_groups) + theta * lam
        xw = x * (w * s * (1 - s))[:, None]
        hess = np.zeros((n_groups, d, d))
        for g, lo, hi in zip(present, bounds[:-1], bounds[1:], strict=True):
            hess[g] = xw[lo:hi].T @ x[lo:hi]  # X_g^T W_g X_g: no (rows, d, d) temporary
        hess += np.diag(lam)
        step = np.linalg.solve(hess, grad[:, :, None])[:, :, 0]
        rate = np.ones(n_groups)
        for _ in range(12):
            cand = theta - rate[:, None] * step
            new, m_new = losses(cand)
            worse = new > cur + 1e-12
            if not worse.any():
                break
            rate[worse] *= 0.5
        keep = ~worse
        theta[keep], cur[keep] = cand[keep], new[keep]
        m = m_new if keep.all() else y * (offset + np.einsum("ij,ij->i", x, theta[group]))
        if np.abs(step[keep] * rate[keep, None]).max(initial=0.0) < 1e-6:
            break
    return theta


def counts(key: np.ndarray, y: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(positives, negatives) per key."""
    return (np.bincount(key, weights=(y > 0), minlength=n),
            np.bincount(key, weights=(y < 0), minlength=n))  # fmt: skip


def log_loss_counts(z: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> float:
    return float(pos @ softplus(-z) + neg @ softplus(z))


def fold_counts(votes, fold: np.ndarray, key: np.ndarray, n: int):
    """Per fold f (``fold``: one per vote): (train pos, train neg, held-out pos, held-out neg)
    per key."""
    pos, neg = counts(key, votes.y, n)
    for f in np.unique(fold):
        hp, hn = counts(key[fold == f], votes.y[fold == f], n)
        yield pos - hp, neg - hn, hp, hn


def cv_pick(grid, score, votes, folds, key, n, loss=log_loss_counts):
    """The grid value whose per-key scores (``score(param, pos, neg)``) fitted on the other
    folds give the lowest held-out loss, summed over the folds (``folds``: one per vote)."""
    splits = list(fold_counts(votes, folds, key, n))
    totals = [sum(loss(score(p, tp, tn), hp, hn) for tp, tn, hp, hn in splits) for p in grid]
    return grid[int(np.argmin(totals))]


def validation_mask(votes, seed: int, share: float = VALIDATION) -> np.ndarray:
    """A random share of the votes (each user keeps most of theirs) for picking settings."""
    return np.random.default_rng(seed + 7).random(len(votes)) < share


def vote_folds(votes, k: int, seed: int, by: str = "user") -> np.ndarray:
    """A fold per vote: whole users per fold (``by="user"``), or whole items (``"item"``: the
    choice for unseen items, whose text alone must carry the prediction)."""
    n = votes.n_items if by == "item" else votes.n_users
    fold = np.random.default_rng(seed).permutation(n) % k
    return fold[votes.item] if by == "item" else fold[votes.user]


def _item_rows(x: np.ndarray, pos: np.ndarray, neg: np.ndarray):
    """Aggregated logistic rows: each item once as agree (weight pos) and once as disagree."""
    keep_p, keep_n = pos > 0, neg > 0
    rows = np.vstack([x[keep_p], x[keep_n]])
    labels = np.r_[np.ones(keep_p.sum()), np.zeros(keep_n.sum())]
    return rows, labels, np.r_[pos[keep_p], neg[keep_n]]


def text_logistic(x, pos, neg, c: float) -> np.ndarray:
    """Per-item log-odds of a logistic regression on item features, fit on vote counts."""
    xi = np.hstack([np.ones((len(x), 1)), x])  # intercept column (almost unpenalised)
    rows, labels, weight = _item_rows(xi, pos, neg)
    lam = np.r_[1e-4, np.full(x.shape[1], 1.0 / c)]  # sklearn's C: Σ loss + ‖w‖² / (2C)
    zero = np.zeros(len(rows), dtype=np.int64)
    theta = fit_groups(zero, rows, 2 * labels - 1, np.zeros(len(rows)), lam, 1, iters=30,
                       weight=weight)  # fmt: skip
    return xi @ theta[0]


def item_intercepts(z: np.ndarray, pos, neg, lam: float, iters: int = 20) -> np.ndarray:
    """Per-item MAP intercept on top of log-odds ``z`` (1-D Newton on counts, all items)."""
    a = np.zeros_like(z)
    for _ in range(iters):
        p = sigmoid(z + a)
        grad = -(pos * (1 - p) - neg * p) + lam * a
        step = grad / ((pos + neg) * p * (1 - p) + lam)
        a -= step
        if np.abs(step).max(initial=0.0) < 1e-8:
            break
    return a


class GlobalVoteModel:
    """Level 1 (module docstring): one model for everybody."""

    def fit(self, votes, item_x: np.ndarray, folds: np.ndarray) -> GlobalVoteModel:
        n = votes.n_items
        self.c_ = cv_pick(C_GRID, lambda c, p, q: text_logistic(item_x, p, q, c), votes, folds,
                          votes.item, n)  # fmt: skip
        pos, neg = counts(votes.item, votes.y, n)
        self.text_ = text_logistic(item_x, pos, neg, self.c_)
        text = self.text_
        self.lam_ = cv_pick(SHRINK_GRID, lambda lam, p, q: text + item_intercepts(text, p, q, lam),
                            votes, folds, votes.item, n)  # fmt: skip
        self.intercept_ = item_intercepts(self.text_, pos, neg, self.lam_)
        return self

    def params(self) -> dict:
        return {"C": self.c_, "item_shrinkage": self.lam_}

    def logit(self, user: np.ndarray, item: np.ndarray) -> np.ndarray:
        return (self.text_ + self.intercept_)[item]


def pca_basis(item_x: np.ndarray, dims: int) -> np.ndarray:
    """Item features projected on their first ``dims`` principal components, standardised."""
    centred = item_x - item_x.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    proj = centred @ vt[:dims].T
    sd = proj.std(0)
    return proj / np.where(sd > 1e-9, sd, 1.0)


class SegmentVoteModel:
    """Level 2 (module docstring): the global level plus shrunk per-segment deviations."""

    def __init__(self, base: GlobalVoteModel, dims: int = 16, text_shrinkage: float = 30.0,
                 soft: bool = True):  # fmt: skip
        self.base = base
        self.dims = dims
        self.text_shrinkage = text_shrinkage
        self.soft = soft

    def fit(self, votes, segment_of_user: np.ndarray, item_x: np.ndarray,
            folds: np.ndarray) -> SegmentVoteModel:  # fmt: skip
        self.segment_of_user_ = np.asarray(segment_of_user, dtype=np.int64)
        self.segments_ = np.unique(self.segment_of_user_[self.segment_of_user_ >= 0])
        self.basis_ = pca_basis(item_x, self.dims)
        seg = self._seg(votes.user)
        n_seg, n_items = len(self.segments_), votes.n_items
        offset = self.base.logit(votes.user, votes.item)
        self.text_ = fit_groups(seg, self.basis_[votes.item], votes.y, offset,
                                self.text_shrinkage, n_seg)  # fmt: skip
        z = self._with_text(votes.user, votes.item)
        cell = seg * n_items + votes.item
        zc = np.zeros(n_seg * n_items)  # the per-cell log-odds before deviations
        zc[cell] = z

        def cells(lam, p, q):
            return zc + item_intercepts(zc, p, q, lam)

        self.lam_ = cv_pick(SHRINK_GRID, cells, votes, folds, cell, n_seg * n_items)
        pos, neg = counts(cell, votes.y, n_seg * n_items)
        self.cell_ = item_intercepts(zc, pos, neg, self.lam_).reshape(n_seg, n_items)
        self.posterior_ = self.segment_posterior(votes) if self.soft else None
        return self

    def _all_segments(self, item: np.ndarray) -> np.ndarray:
        """(n_seg, len(item)) log-odds of the item under each segment."""
        z = self.base.logit(np.zeros(len(item), dtype=np.int64), item)
        return z[None, :] + self.text_ @ self.basis_[item].T + self.cell_[:, item]

    def segment_posterior(self, votes) -> np.ndarray:
        """(n_users, n_seg) posterior over segments from each user's ``votes``: prior = the
        segments' shares of the assigned users (+1 each), likelihood = the segment level's
        vote probabilities. A user with 1-2 votes stays near the prior (a mixture of the
        segments); one with many votes is placed as sharply as their votes allow."""
        n_seg = len(self.segments_)
        prior = np.bincount(self._seg(np.flatnonzero(self.segment_of_user_ >= 0)),
                            minlength=n_seg) + 1.0  # fmt: skip
        loglik = np.zeros((votes.n_users, n_seg))
        z = self._all_segments(votes.item)  # (n_seg, n)
        for s in range(n_seg):
            loglik[:, s] = np.bincount(votes.user, weights=-softplus(-votes.y * z[s]),
                                       minlength=votes.n_users)  # fmt: skip
        logpost = loglik + np.log(prior / prior.sum())
        logpost -= logpost.max(1, keepdims=True)
        post = np.exp(logpost)
        return post / post.sum(1, keepdims=True)

    def place(self, votes, users: np.ndarray) -> None:
        """Recompute ``users``' posteriors over segments from their ``votes`` alone (new
        users placed from a few shots; the segments stay as fitted)."""
        if self.posterior_ is not None:
            v = votes.subset(np.isin(votes.user, users))
            self.posterior_[users] = self.segment_posterior(v)[users]

    def params(self) -> dict:
        return {"segments": len(self.segments_), "cell_shrinkage": self.lam_,
                "text_shrinkage": self.text_shrinkage}  # fmt: skip

    def _seg(self, user: np.ndarray) -> np.ndarray:
        """Row of each user's segment in ``segments_`` (unknown segment → its own row 0 base)."""
        return np.searchsorted(self.segments_, np.maximum(self.segment_of_user_[user], 0)).clip(
            0, len(self.segments_) - 1
        )

    def _with_text(self, user, item) -> np.ndarray:
        z = self.base.logit(user, item)
        known = self.segment_of_user_[user] >= 0
        dev = np.einsum("ij,ij->i", self.text_[self._seg(user)], self.basis_[item])
        return z + np.where(known, dev, 0.0)

    def logit(self, user: np.ndarray, item: np.ndarray) -> np.ndarray:
        if self.posterior_ is not None:  # the mixture over segments, as a log-odds
            return prob_logit(np.einsum("sn,ns->n", sigmoid(self._all_segments(item)),
                                        self.posterior_[user]))  # fmt: skip
        known = self.segment_of_user_[user] >= 0
        return self._with_text(user, item) + np.where(known, self.cell_[self._seg(user), item], 0)


def mixture_weights(probs: np.ndarray, iters: int = 200) -> np.ndarray:
    """Simplex weights ``w`` maximising ``Σ_n log Σ_k w_k probs[k, n]`` (EM; ``probs``: each
    candidate's probability of the observed vote on held-out votes): Bayesian stacking of
    predictive distributions (Yao et al. 2018)."""
    k = len(probs)
    w = np.full(k, 1.0 / k)
    for _ in range(iters):
        r = w[:, None] * probs
        r /= r.sum(0, keepdims=True)
        new = r.mean(1)
        if np.abs(new - w).max() < 1e-6:
            return new
        w = new
    return w


class SegmentMixture:
    """A probability mixture of segment levels (one per candidate segmentation), weights from
    ``mixture_weights`` on validation votes; ``main`` (the largest weight) names the segments
    in reports."""

    def __init__(self, models: list, weights):
        self.models = models
        self.weights = np.asarray(weights, dtype=float) / np.sum(weights)
        self.main = models[int(np.argmax(self.weights))]
        self.segment_of_user_ = self.main.segment_of_user_

    def params(self) -> dict:
        return self.main.params()

    def place(self, votes, users: np.ndarray) -> None:
        for model in self.models:
            model.place(votes, users)

    def logit(self, user: np.ndarray, item: np.ndarray) -> np.ndarray:
        return prob_logit(sum(w * sigmoid(m.logit(user, item))
                              for w, m in zip(self.weights, self.models, strict=True)))  # fmt: skip


class UserFactorModel:
    """Level 3 (module docstring): segment + per-user intercept + low-rank user weights over a
    shared item basis."""

    def __init__(self, base, rank: int = 8, shrinkage: float | None = None,
                 bias_shrinkage: float | None = None, seed: int = 0):  # fmt: skip
        self.base = base
        self.rank = rank
        self.shrinkage = shrinkage  # None (both): picked on a validation share of the votes
        self.bias_shrinkage = bias_shrinkage
        self.seed = seed

    def fit(self, votes, item_x: np.ndarray) -> UserFactorModel:
        self.basis_ = pca_basis(item_x, max(self.rank * 2, 16))
        lams = [self.shrinkage] if self.shrinkage else USER_GRID
        biases = [self.bias_shrinkage] if self.bias_shrinkage else BIAS_GRID
        if len(lams) * len(biases) > 1:
            self.shrinkage_, self.bias_shrinkage_ = self._pick(votes, lams, biases)
        else:
            self.shrinkage_, self.bias_shrinkage_ = lams[0], biases[0]
        self._fit(votes, self.shrinkage_)
        return self

    def params(self) -> dict:
        return {"rank": self.rank, "shrinkage": self.shrinkage_,
                "bias_shrinkage": self.bias_shrinkage_}  # fmt: skip

    def _pick(self, votes, lams, biases) -> tuple[float, float]:
        val = validation_mask(votes, self.seed)
        train, held = votes.subset(~val), votes.subset(val)
        offset = self.base.logit(train.user, train.item)
        self.items_ = self._item_basis(train, offset)
        losses = {}
        for bias in biases:
            self.bias_shrinkage_, theta = bias, None
            for lam in sorted(lams, reverse=True):  # strong to weak prior, warm-started
                theta = self._users(train, offset, lam, theta)
                self.theta_ = theta
                z = self.logit(held.user, held.item)
                losses[(lam, bias)] = float(softplus(-held.y * z).sum())
        return min(losses, key=losses.get)

    def _prior(self, lam: float) -> np.ndarray:
        return np.r_[self.bias_shrinkage_, np.full(self.rank, lam)]

    def _fit(self, votes, lam: float) -> None:
        offset = self.base.logit(votes.user, votes.item)
        self.items_ = self._item_basis(votes, offset)
        self.theta_ = self._users(votes, offset, lam)

    def _users(self, votes, offset, lam: float, theta0=None) -> np.ndarray:
        """Every user's (b_u, p_u): a MAP logistic fit on the item basis, segment as offset."""
        x = np.hstack([np.ones((len(votes), 1)), self.items_[votes.item]])
        return fit_groups(votes.user, x, votes.y, offset, self._prior(lam), votes.n_users, theta0)

    def _item_basis(self, votes, offset: np.ndarray) -> np.ndarray:
        """The shared item basis ``q_i``: the top right singular vectors of the users × items
        residual of the segment level (sparse), each scaled by its share of the residual, so
        weaker directions are shrunk more; unseen items get a ridge map of their text's."""
        from scipy.sparse.linalg import svds

        resid = votes.y - np.tanh(0.5 * offset)
        mat = sp.csr_matrix((resid, (votes.user, votes.item)), shape=(votes.n_users, votes.n_items))
        q = np.zeros((votes.n_items, self.rank))
        k = min(self.rank, min(mat.shape) - 1)
        if k >= 1:
            v0 = np.random.default_rng(self.seed).standard_normal(min(mat.shape))
            _, s, vt = svds(mat, k=k, v0=v0)
            order = np.argsort(-s)
            s, vt = s[order], vt[order]
            q[:, :k] = vt.T * np.sqrt(votes.n_items) * (s / max(s[0], 1e-12))
        seen = np.bincount(votes.item, minlength=votes.n_items) > 0
        return self._text_map(q, seen)

    def _text_map(self, q: np.ndarray, seen: np.ndarray) -> np.ndarray:
        """Seen items keep their factors; unseen ones get a ridge map of their text's."""
        out = q.copy()
        if seen.sum() >= 2 and (~seen).any():
            ridge = Ridge(alpha=10.0).fit(self.basis_[seen], q[seen])
            out[~seen] = ridge.predict(self.basis_[~seen])
        return out

    def place(self, votes, users: np.ndarray) -> None:
        """(Re)fit ``users``' segment posterior, intercepts and weights from their ``votes``
        alone, the item basis fixed: new users placed from a few shots (all other users keep
        theirs)."""
        if hasattr(self.base, "place"):  # their segment posterior first, then b_u, p_u on it
            self.base.place(votes, users)
        v = votes.subset(np.isin(votes.user, users))
        theta = self._users(v, self.base.logit(v.user, v.item), self.shrinkage_)
        self.theta_[users] = theta[users]

    def logit(self, user: np.ndarray, item: np.ndarray) -> np.ndarray:
        t = self.theta_[user]
        return (self.base.logit(user, item) + t[:, 0]
                + np.einsum("ij,ij->i", t[:, 1:], self.items_[item]))  # fmt: skip
