"""Local moves in the tailoring space: small changes to a good genome, late layers first.

With prefix reuse a change at layer j costs only the layers after j, so moves are drawn with
weight growing with the position. Moves: shift a cut (a removed layer and a kept one trade places,
nearby first), change a kept layer's sources, nudge a merge's lambda. Every result keeps the
target layer count. Pure function of (genome, space, rng); no nevergrad, no torch.
"""

from __future__ import annotations

import numpy as np

from gptailor_merge.core.genome import Genome, LayerSpec
from gptailor_merge.search.space import SearchSpace

LATE_BIAS = 1.0  # weight of position i is (i + 1) ** LATE_BIAS
SECOND_MOVE_P = 0.3


def _late_weights(positions: list[int]) -> np.ndarray:
    w = np.array([(p + 1.0) ** LATE_BIAS for p in positions])
    return w / w.sum()


def _shift_cut(g: Genome, space: SearchSpace, rng: np.random.Generator) -> Genome | None:
    kept = {s.layer_idx: s for s in g.layers}
    removed = [i for i in range(g.n_layers) if i not in kept]
    if not removed or not kept:
        return None
    r = int(rng.choice(removed, p=_late_weights(removed)))
    candidates = sorted(kept)
    near = np.array([1.0 / abs(k - r) ** 2 for k in candidates])
    k = int(rng.choice(candidates, p=near / near.sum()))
    spec = kept.pop(k)
    kept[r] = LayerSpec(r, spec.sources, lam=spec.lam, density=spec.density, weights=spec.weights)
    return Genome(g.n_layers, g.n_candidates, tuple(kept[i] for i in sorted(kept)), method=g.method)


def _change_sources(g: Genome, space: SearchSpace, rng: np.random.Generator) -> Genome | None:
    subsets = space.subsets
    if len(subsets) < 2:
        return None
    positions = [s.layer_idx for s in g.layers]
    target = int(rng.choice(positions, p=_late_weights(positions)))
    layers = []
    for s in g.layers:
        if s.layer_idx == target:
            others = [x for x in subsets if x != s.sources]
            new = others[int(rng.integers(len(others)))]
            lam = s.lam if s.is_merge else float(np.mean(space.lambda_range))
            s = LayerSpec(s.layer_idx, new, lam=lam, density=s.density)
        layers.append(s)
    return Genome(g.n_layers, g.n_candidates, tuple(layers), method=g.method)


def _nudge_lambda(g: Genome, space: SearchSpace, rng: np.random.Generator) -> Genome | None:
    lo, hi = space.lambda_range
    merged = [s.layer_idx for s in g.layers if s.is_merge]
    if not merged or hi <= lo:
        return None
    target = int(rng.choice(merged, p=_late_weights(merged)))
    step = float(rng.normal(0.0, 0.2 * (hi - lo)))
    layers = tuple(
        LayerSpec(s.layer_idx, s.sources, lam=round(float(np.clip(s.lam + step, lo, hi)), 4),
                  density=s.density, weights=s.weights) if s.layer_idx == target else s
        for s in g.layers)
    return Genome(g.n_layers, g.n_candidates, layers, method=g.method)


MOVES = ((_shift_cut, 0.35), (_change_sources, 0.45), (_nudge_lambda, 0.20))


def neighbour(genome: Genome, space: SearchSpace, rng: np.random.Generator) -> Genome:
    """One or two local moves away from `genome` (the same genome only if no move applies)."""
    out = genome
    for attempt in range(2):
        if attempt == 1 and rng.random() >= SECOND_MOVE_P:
            break
        moves = [(f, p) for f, p in MOVES]
        while moves:
            weights = np.array([p for _, p in moves])
            pick = int(rng.choice(len(moves), p=weights / weights.sum()))
            moved = moves[pick][0](out, space, rng)
            if moved is not None and moved.genome_id != out.genome_id:
                out = moved
                break
            moves.pop(pick)
    return out
