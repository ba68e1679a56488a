"""Replay memory: N instances per relation, chosen by k-means on the model's hidden states.

The field's standard (EMAR, RP-CRE, CRL, CEAR): cluster a relation's training instances into N clusters and
keep the instance nearest to each centroid, so the memory covers the relation's modes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
from sklearn.cluster import KMeans

from errwise.data.types import RelationInstance


def kmeans_select(features: np.ndarray, n: int, seed: int) -> list[int]:
    """Indices of the rows nearest to each of `n` k-means centroids (distinct; all rows if there are <= n)."""
    if len(features) <= n:
        return list(range(len(features)))
    distances = KMeans(n_clusters=n, random_state=seed, n_init=1).fit_transform(features)  # (N, n)
    chosen: list[int] = []
    for k in range(n):
        # CRL takes argmin per centroid; two centroids rarely share a nearest point, but then take the next one.
        for i in np.argsort(distances[:, k]):
            if int(i) not in chosen:
                chosen.append(int(i))
                break
    return chosen


def select(
    instances: Sequence[RelationInstance],
    n: int,
    *,
    strategy: str,
    seed: int,
    features: np.ndarray | None = None,
) -> list[RelationInstance]:
    """Choose the memory of one relation. `features` (one row per instance) are needed for k-means."""
    if strategy == "random":
        rng = random.Random(seed)
        return rng.sample(list(instances), min(n, len(instances)))
    if len(instances) <= n:  # all of them (run.update_memory computes no features then)
        return list(instances)
    assert features is not None, "k-means selection needs features"
    return [instances[i] for i in kmeans_select(features, n, seed)]
