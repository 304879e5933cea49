"""Average-split k-d tree over splitting planes, stored as flat arrays.

Every internal node splits its points at the *mean* of their coordinate along one splitting
plane (a unit direction): points with ``x · plane >= threshold`` go right. Planes are rows of a
small matrix, so the same structure covers the original design (random coordinate axes: the
planes are unit vectors) and its measured improvements (axes of a PCA rotation, chosen by
largest spread). Nodes are numbered breadth-first, so children always follow their parent and
every traversal below is a loop over tree *levels* with numpy work over all queries at once.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

SPLIT_RULES = ("random", "spread")

#: Rows sampled to estimate per-axis spread at a node; the split *point* always uses all rows.
_SPREAD_SAMPLE = 8192


@dataclass(frozen=True)
class Tree:
    """Flat k-d tree. Node ``i`` is a leaf iff ``node_plane[i] == -1``.

    Attributes
    ----------
    planes : (P, d) float32 — splitting directions referenced by internal nodes.
    node_plane : (N,) int32 — plane of each internal node, -1 for leaves.
    threshold : (N,) float32 — split point (mean) of each internal node.
    left, right : (N,) int32 — children of internal nodes, -1 for leaves.
    node_leaf : (N,) int32 — leaf (= bucket) number of each leaf node, -1 for internal nodes.
    """

    planes: np.ndarray
    node_plane: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    node_leaf: np.ndarray

    @property
    def n_nodes(self) -> int:
        return int(self.node_plane.shape[0])

    @property
    def n_leaves(self) -> int:
        return int(np.count_nonzero(self.node_leaf >= 0))

    def levels(self) -> list[np.ndarray]:
        """Internal node ids grouped by depth (root level first)."""
        out: list[np.ndarray] = []
        frontier = np.array([0], dtype=np.int32)
        while frontier.size:
            internal = frontier[self.node_plane[frontier] >= 0]
            if internal.size == 0:
                break
            out.append(internal)
            frontier = np.concatenate([self.left[internal], self.right[internal]])
        return out

    def leaf_of(self, points: np.ndarray) -> np.ndarray:
        """Leaf number that each row of ``points`` (n, d) descends to — shape (n,)."""
        proj = points @ self.planes.T if self.planes.size else np.zeros((len(points), 0))
        node = np.zeros(len(points), dtype=np.int64)
        rows = np.arange(len(points))
        while True:
            active = self.node_plane[node] >= 0
            if not active.any():
                return self.node_leaf[node].astype(np.int64)
            n_act = node[active]
            go_right = proj[rows[active], self.node_plane[n_act]] >= self.threshold[n_act]
            node[active] = np.where(go_right, self.right[n_act], self.left[n_act])

    def bbf_penalties(self, queries: np.ndarray) -> np.ndarray:
        """Best-bin-first lower bounds: (nq, n_leaves) sum of squared plane crossings.

        A leaf's penalty is the sum, over the splits on its path where the query lies on the
        other side, of the squared distance from the query to that split plane — zero for the
        leaf the query falls in. It is a ranking heuristic, not a bound: when one direction is
        split several times on a path its crossings are all added (exact per-direction
        tracking would need nq × nodes × planes memory), which over-penalises far leaves.
        """
        nq = len(queries)
        proj = queries @ self.planes.T if self.planes.size else np.zeros((nq, 0), np.float32)
        penalty = np.zeros((nq, self.n_nodes), dtype=np.float32)
        for level in self.levels():
            gap = proj[:, self.node_plane[level]] - self.threshold[level]  # (nq, |level|)
            cost = np.square(gap)
            base = penalty[:, level]
            right_side = gap >= 0
            penalty[:, self.left[level]] = base + np.where(right_side, cost, 0.0)
            penalty[:, self.right[level]] = base + np.where(right_side, 0.0, cost)
        leaves = np.flatnonzero(self.node_leaf >= 0)
        out = np.empty((nq, len(leaves)), dtype=np.float32)
        out[:, self.node_leaf[leaves]] = penalty[:, leaves]
        return out


def build_tree(
    coords: np.ndarray,
    *,
    bucket_size: int,
    max_depth: int,
    seed: int,
    split: str = "spread",
) -> tuple[Tree, np.ndarray]:
    """Build the average-split tree over ``coords`` (n, m): row coordinates in the split basis.

    The caller chooses the basis (identity for the original design, a PCA rotation for the
    improved one) and maps plane ids back to directions; see :func:`with_basis`.

    Returns
    -------
    tree : Tree whose ``planes`` are unit vectors in coordinate space (m columns).
    leaf_of_row : (n,) int64 leaf number of every row — each row is in exactly one leaf.
    """
    if split not in SPLIT_RULES:
        raise ValueError(f"split must be one of {SPLIT_RULES}, got {split!r}")
    n, m = coords.shape
    rng = np.random.default_rng(seed)
    node_axis: list[int] = []
    threshold: list[float] = []
    node_leaf: list[int] = []
    children: list[tuple[int, int]] = []

    def new_node() -> int:
        node_axis.append(-1)
        threshold.append(0.0)
        node_leaf.append(-1)
        children.append((-1, -1))
        return len(node_axis) - 1

    leaf_of_row = np.empty(n, dtype=np.int64)
    n_leaves = 0
    queue: deque[tuple[int, np.ndarray, int]] = deque([(new_node(), np.arange(n), 0)])
    while queue:  # breadth-first, so node ids grow with depth
        node, rows, depth = queue.popleft()
        split_at = None
        if len(rows) > bucket_size and depth < max_depth:
            split_at = _choose_split(coords, rows, split, rng)
        if split_at is None:
            node_leaf[node] = n_leaves
            leaf_of_row[rows] = n_leaves
            n_leaves += 1
            continue
        axis, mean, go_right = split_at
        node_axis[node], threshold[node] = axis, mean
        lo, hi = new_node(), new_node()
        children[node] = (lo, hi)
        queue.append((lo, rows[~go_right], depth + 1))
        queue.append((hi, rows[go_right], depth + 1))
    used = sorted({a for a in node_axis if a >= 0})
    remap = {a: i for i, a in enumerate(used)}
    planes = np.zeros((len(used), m), dtype=np.float32)
    planes[np.arange(len(used)), used] = 1.0
    tree = Tree(
        planes=planes,
        node_plane=np.array([remap.get(a, -1) for a in node_axis], dtype=np.int32),
        threshold=np.array(threshold, dtype=np.float32),
        left=np.array([c[0] for c in children], dtype=np.int32),
        right=np.array([c[1] for c in children], dtype=np.int32),
        node_leaf=np.array(node_leaf, dtype=np.int32),
    )
    return tree, leaf_of_row


def with_basis(tree: Tree, basis: np.ndarray | None) -> Tree:
    """Express a tree built in a rotated basis (rows of ``basis``, (m, d)) in data space."""
    if basis is None:
        return tree
    planes = (tree.planes @ basis).astype(np.float32)
    return Tree(planes, tree.node_plane, tree.threshold, tree.left, tree.right, tree.node_leaf)


def _choose_split(
    coords: np.ndarray, rows: np.ndarray, rule: str, rng: np.random.Generator
) -> tuple[int, float, np.ndarray] | None:
    """Pick the axis and split at the mean; None when the node's points cannot be separated."""
    sample = rows if len(rows) <= _SPREAD_SAMPLE else rng.choice(rows, _SPREAD_SAMPLE, replace=False)
    spread = coords[sample].var(axis=0, dtype=np.float64)
    for _ in range(4):  # a random or sampled axis can still fail to separate; retry a few
        candidates = np.flatnonzero(spread > 0)
        if candidates.size == 0:
            return None
        axis = int(rng.choice(candidates)) if rule == "random" else int(np.argmax(spread))
        column = coords[rows, axis]
        mean = float(column.mean(dtype=np.float64))
        go_right = column >= np.float32(mean)
        n_right = int(np.count_nonzero(go_right))
        if 0 < n_right < len(rows):
            return axis, mean, go_right
        spread[axis] = 0.0
    return None


class MutableTree:
    """A copy of a tree that can turn leaves into nodes (append-only), for local splits.

    A write that overfills a bucket splits it in place: the leaf becomes a node with two
    leaves, so every other bucket keeps its number and the manifest's table only grows.
    """

    def __init__(self, tree: Tree) -> None:
        self.planes = [tree.planes]
        self.node_plane = tree.node_plane.tolist()
        self.threshold = tree.threshold.tolist()
        self.left = tree.left.tolist()
        self.right = tree.right.tolist()
        self.node_leaf = tree.node_leaf.tolist()
        self.n_planes = len(tree.planes)

    def split_leaf(self, leaf: int, new_leaf: int, plane: np.ndarray, threshold: float) -> None:
        node = self.node_leaf.index(leaf)
        lo, hi = len(self.node_plane), len(self.node_plane) + 1
        self.node_plane[node], self.threshold[node] = self.n_planes, threshold
        self.left[node], self.right[node], self.node_leaf[node] = lo, hi, -1
        self.node_plane += [-1, -1]
        self.threshold += [0.0, 0.0]
        self.left += [-1, -1]
        self.right += [-1, -1]
        self.node_leaf += [leaf, new_leaf]
        self.planes.append(plane[None, :])
        self.n_planes += 1

    def freeze(self) -> Tree:
        return Tree(
            planes=np.concatenate(self.planes).astype(np.float32),
            node_plane=np.array(self.node_plane, np.int32),
            threshold=np.array(self.threshold, np.float32),
            left=np.array(self.left, np.int32),
            right=np.array(self.right, np.int32),
            node_leaf=np.array(self.node_leaf, np.int32),
        )
