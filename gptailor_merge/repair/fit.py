"""Training-free repair of the cuts (ReplaceMe, arXiv 2505.02819): one linear map per removed run.

For each maximal run of removed layers, a map `T` is fitted on calibration text so that the kept
layer `i` before the run, with its MLP output `M` replaced by `M T`, lands where the dense base's
residual stream is after the run; `T` is then fused into layer `i`'s down projection, so the model
keeps the standard architecture. Takes a Family, a Genome and texts; returns the stitched,
repaired model and the maps. Never changes the family's tensors or the stitcher's cached layers.

Target (`target`): whose hidden state after the run's last removed layer `M T` should reach.
- `self` (default): the candidate's own stream with the run put back, i.e. the base's removed
  layers applied to the tailored model's residual stream at layer `i` (the earlier runs already
  repaired). `H - Y` is then exactly what the removed block would have added here, which is what a
  linear map on `M` can stand in for. The base is the one family member defined at every removed
  position (a genome chooses sources only for kept layers).
- `base`: the dense base's own hidden state (ReplaceMe's target for a single model). For a
  base-only genome with one run both targets are the same; for a merged genome they are not: the
  merged prefix's stream differs from the base's, so `H - Y` then also asks the map to undo the
  merge, which one map on one MLP output cannot do (SmolLM2 at 25%: relative fit error still 0.95 at
  the second run, and the repaired model's prose perplexity 9x the unrepaired one's).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gptailor_merge.baselines.calibration import encode_all
from gptailor_merge.core.errors import RepairError
from gptailor_merge.core.genome import Genome, LayerSpec
from gptailor_merge.family.architecture import DecoderLayout
from gptailor_merge.family.family import Family
from gptailor_merge.repair.calibration import BALANCES
from gptailor_merge.scoring.batching import length_sorted_batches, model_device, pad_right

logger = logging.getLogger(__name__)

DEFAULT_RIDGE = 1e-4
"""Ridge, relative to the mean diagonal of M^T M (scale-free across models and token counts):
small enough to leave a well-posed fit unchanged, large enough that a rank-deficient M (few
calibration tokens, dead MLP directions) gives a finite map instead of a singular solve."""

TOKENS_PER_DIM = 10
"""Below this many calibration tokens per hidden dimension a repair warns: each of the map's
`hidden` output columns is a regression on `hidden` inputs. SmolLM2 (hidden 576) at 25%:
2k tokens (3.5 per dimension) overfit and hurt transfer text, 17k (30 per dimension) helped."""

TARGET = "self"
TARGETS = ("self", "base")

OBJECTIVE = "lstsq"
OBJECTIVES = ("lstsq", "cosine")
"""`lstsq`: min ||M T - (H - Y)||^2 (closed form). `cosine` (ReplaceMe's cosine variant): min mean
(1 - cos(Y + M T, H)) over tokens, from the least-squares map, by L-BFGS on the stored rows. The next
layer reads the stream through an RMSNorm, which discards its scale, so the direction is what must
land; the price is keeping the rows (3 x tokens x hidden floats) instead of the sums."""
COSINE_STEPS = 50
"""L-BFGS iterations of the cosine fit (each one pass over the rows, plus line-search passes)."""

BALANCE = "examples"
"""How the calibration tasks weigh in the fit (`repair.calibration.BALANCES`)."""

STRENGTH = 1.0
"""How far each fused map goes from the identity (no repair) to the fitted map: T_a = I + a (T - I).
A map fitted on the calibration positions can move the stream where the scorer reads other
positions (multiple-choice continuations); a < 1 trades part of the fit for less of that."""


def check_strength(strength: float) -> float:
    if not 0.0 <= strength <= 1.0:
        raise RepairError(f"repair strength must be in [0, 1], got {strength}")
    return float(strength)


def shrink_map(t: torch.Tensor, strength: float) -> torch.Tensor:
    """I + strength (t - I); `t` itself at strength 1 (bitwise)."""
    if check_strength(strength) == 1.0:
        return t
    identity = torch.eye(t.shape[0], dtype=t.dtype, device=t.device)
    return identity + strength * (t - identity)


@dataclass(frozen=True)
class RemovedRun:
    """A maximal run of consecutive removed layers and the kept layer just before it."""

    removed: tuple[int, ...]  # original layer indices
    layer_idx: int  # the kept layer before the run (original index): its down_proj gets T
    position: int  # that layer's slot in the tailored model


def removed_runs(genome: Genome) -> tuple[list[RemovedRun], list[tuple[int, ...]]]:
    """(runs to repair, runs starting at layer 0). The latter have no layer before them to carry a
    map (the embeddings are shared with the LM head in tied models), so they are left alone."""
    runs: list[RemovedRun] = []
    skipped: list[tuple[int, ...]] = []
    kept = genome.kept
    current: list[int] = []
    for i in range(genome.n_layers + 1):
        if i < genome.n_layers and i not in kept:
            current.append(i)
            continue
        if current:
            if current[0] == 0:
                skipped.append(tuple(current))
            else:
                before = current[0] - 1
                runs.append(RemovedRun(tuple(current), before, kept.index(before)))
            current = []
    return runs, skipped


# ---- the fit ------------------------------------------------------------------------------------
@dataclass
class NormalEquations:
    """Running float64 sums of the least-squares problem M T ~ D: G = M^T M, C = M^T D, ||D||^2."""

    gram: torch.Tensor | None = None
    cross: torch.Tensor | None = None
    target_sq: float = 0.0
    n_rows: int = 0

    def add(self, m: torch.Tensor, d: torch.Tensor, w: torch.Tensor | None = None) -> None:
        """`m`, `d`: (n, h) rows (any float dtype; summed in float64 on their device); `w`, where
        given, each row's weight (n,) (weighted least squares)."""
        m, d = m.double(), d.double()
        mw, dw = (m, d) if w is None else (m * w.double()[:, None], d * w.double()[:, None])
        gram, cross = mw.T @ m, mw.T @ d
        self.gram = gram if self.gram is None else self.gram + gram
        self.cross = cross if self.cross is None else self.cross + cross
        self.target_sq += float((dw * d).sum())
        self.n_rows += m.shape[0]

    def residual(self, t: torch.Tensor) -> float:
        """||M T - D|| / ||D|| from the sums (no rows kept)."""
        sq = (t * (self.gram @ t)).sum() - 2 * (t * self.cross).sum() + self.target_sq
        return float(sq.clamp_min(0.0).sqrt()) / max(self.target_sq, 1e-300) ** 0.5


@dataclass
class Rows:
    """The fit's rows kept for the cosine objective: M, Y and H per batch (float32, CPU)."""

    m: list[torch.Tensor] = field(default_factory=list)
    y: list[torch.Tensor] = field(default_factory=list)
    h: list[torch.Tensor] = field(default_factory=list)
    w: list[torch.Tensor | None] = field(default_factory=list)

    def add(self, m: torch.Tensor, y: torch.Tensor, h: torch.Tensor, w: torch.Tensor | None = None) -> None:
        for store, value in ((self.m, m), (self.y, y), (self.h, h)):
            store.append(value.detach().float().cpu())
        self.w.append(None if w is None else w.detach().float().cpu())

    def cosine_distance(self, t: torch.Tensor) -> torch.Tensor:
        """(weighted) mean over tokens of 1 - cos(Y + M T, H) (differentiable in `t`)."""
        total, n = t.new_zeros(()), 0.0
        weights = self.w or [None] * len(self.m)
        for m, y, h, w in zip(self.m, self.y, self.h, weights, strict=True):
            distance = 1 - torch.nn.functional.cosine_similarity(y + m @ t, h, dim=-1)
            total = total + (distance.sum() if w is None else (w * distance).sum())
            n += m.shape[0] if w is None else float(w.sum())
        return total / max(n, 1e-12)


def fit_cosine_map(rows: Rows, start: torch.Tensor, steps: int = COSINE_STEPS) -> tuple[torch.Tensor, float, float]:
    """(T, cosine distance at `start`, at T): L-BFGS from `start` (the least-squares map) on the
    mean cosine distance; float32 on CPU, deterministic for a fixed thread count."""
    if steps < 1:
        raise RepairError(f"cosine steps must be at least 1, got {steps}")
    if any(x.is_inference() for x in rows.m):  # collected under inference_mode: autograd needs copies
        rows = Rows([x.clone() for x in rows.m], [x.clone() for x in rows.y], [x.clone() for x in rows.h],
                    [None if x is None else x.clone() for x in rows.w])
    t = start.detach().float().cpu().contiguous().clone().requires_grad_(True)
    with torch.no_grad():
        before = float(rows.cosine_distance(t))
    opt = torch.optim.LBFGS([t], lr=1.0, max_iter=steps, history_size=10, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = rows.cosine_distance(t)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        after = float(rows.cosine_distance(t))
    if not math.isfinite(after) or after > before:  # never worse than its start
        return start.double(), before, before
    return t.detach().double(), before, after


def fit_linear_map(eq: NormalEquations, ridge: float = DEFAULT_RIDGE) -> torch.Tensor:
    """T = argmin ||M T - D||^2 + lam ||T||^2 in float64, lam = ridge * trace(M^T M) / h."""
    if eq.gram is None or eq.n_rows == 0:
        raise RepairError("no calibration token reached the repaired layer; give at least one text")
    if ridge < 0:
        raise RepairError(f"ridge must be >= 0, got {ridge}")
    h = eq.gram.shape[0]
    lam = ridge * float(eq.gram.diagonal().sum()) / h
    system = eq.gram + lam * torch.eye(h, dtype=eq.gram.dtype, device=eq.gram.device)
    t, info = torch.linalg.solve_ex(system, eq.cross)
    if int(info) != 0 or not torch.isfinite(t).all():
        raise RepairError(
            f"the least-squares system is singular ({eq.n_rows} calibration tokens, hidden size {h}, "
            f"ridge {ridge}); raise the ridge (e.g. --ridge 1e-3) or give more calibration text"
        )
    return t


# ---- fusing -------------------------------------------------------------------------------------
def down_projection(layer: nn.Module, where: str = "") -> nn.Linear:
    """The layer's MLP output projection (`mlp.down_proj`: Llama, Mistral, Qwen2 and kin)."""
    down = getattr(getattr(layer, "mlp", None), "down_proj", None)
    if not isinstance(down, nn.Linear):
        raise RepairError(
            f"{where or type(layer).__name__} has no `mlp.down_proj` linear layer; linear repair "
            "supports decoder layers that add their MLP output to the residual stream through "
            "mlp.down_proj (Llama, Mistral, Qwen2). Use this model without --repair"
        )
    return down


def fuse_map(layer: nn.Module, t: torch.Tensor) -> nn.Module:
    """A copy of `layer` whose MLP output is multiplied by `t` on the right: y T = x (W^T T) + b T,
    so down_proj.weight <- (W^T T)^T = T^T W (and bias <- T^T b), computed in float64. Every other
    parameter is shared with `layer`, which stays untouched (it may be a cached or base layer)."""
    down = down_projection(layer)
    t64 = t.to(down.weight.device, torch.float64)
    memo: dict[int, Any] = {id(p): p for p in layer.parameters()}
    weight = (t64.T @ down.weight.detach().double()).to(down.weight.dtype)
    memo[id(down.weight)] = nn.Parameter(weight, requires_grad=False)
    if down.bias is not None:
        bias = (t64.T @ down.bias.detach().double()).to(down.bias.dtype)
        memo[id(down.bias)] = nn.Parameter(bias, requires_grad=False)
    return copy.deepcopy(layer, memo)


# ---- collection ---------------------------------------------------------------------------------
class _Stop(Exception):
    """Raised from a hook once the needed layer has run: the rest of the stack is not needed."""


def _output(value: Any) -> torch.Tensor:
    return value[0] if isinstance(value, tuple | list) else value


def _run(stack: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
    try:
        stack(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _Stop:
        pass


@dataclass(frozen=True)
class RunFit:
    """One repaired run: the map's layer and how well it fits the calibration tokens."""

    run: RemovedRun
    n_tokens: int
    error_unrepaired: float  # ||M - D|| / ||D||: the cut with T = identity (no repair)
    error_repaired: float  # ||M T - D|| / ||D||
    cosine_lstsq: float | None = None  # mean 1 - cos(Y + M T, H) at the least-squares map (cosine fit)
    cosine_fit: float | None = None  # ... at the cosine map


@dataclass(frozen=True)
class RepairInfo:
    """What `repair_model` did: maps by kept layer (original index, float64 on CPU), the fit of
    each run, the runs left alone (starting at layer 0), and the settings used."""

    maps: dict[int, torch.Tensor]
    fits: tuple[RunFit, ...]
    skipped: tuple[tuple[int, ...], ...]
    ridge: float
    n_texts: int
    max_length: int
    batch_size: int
    target: str = TARGET
    objective: str = OBJECTIVE
    strength: float = STRENGTH
    balance: str = BALANCE
    details: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        def cosine(f: RunFit) -> dict:
            return ({} if f.cosine_fit is None else
                    {"cosine_lstsq": round(f.cosine_lstsq, 6), "cosine_fit": round(f.cosine_fit, 6)})

        return {
            "target": self.target,
            "objective": self.objective,
            "strength": self.strength,
            "balance": self.balance,
            "ridge": self.ridge,
            "runs": [{"removed": list(f.run.removed), "layer": f.run.layer_idx, "position": f.run.position,
                      "n_tokens": f.n_tokens, "error_unrepaired": round(f.error_unrepaired, 6),
                      "error_repaired": round(f.error_repaired, 6), **cosine(f)} for f in self.fits],
            "skipped_runs_at_layer_0": [list(s) for s in self.skipped],
        }


def balanced_weights(lengths: Sequence[int], groups: Sequence[int]) -> list[float]:
    """Per sequence, the weight of each of its tokens so that every group (calibration task) has the
    same total weight and all weights sum to the token count: N / (G * N_g)."""
    if len(groups) != len(lengths):
        raise RepairError(f"{len(groups)} calibration groups for {len(lengths)} calibration texts")
    per_group: dict[int, int] = {}
    for n, g in zip(lengths, groups, strict=True):
        per_group[g] = per_group.get(g, 0) + n
    total = sum(per_group.values())
    return [total / (len(per_group) * per_group[g]) if per_group[g] else 0.0 for g in groups]


class _Batches:
    """The calibration texts as right-padded batches (the same order for every pass), each with its
    sequences' token weights (None: every token once)."""

    def __init__(self, tokenizer: Any, texts: Sequence[str], batch_size: int, max_length: int,
                 groups: Sequence[int] | None = None) -> None:
        if max_length < 1:
            raise RepairError(f"max_length must be at least 1, got {max_length}")
        self.sequences = encode_all(tokenizer, texts, max_length)
        self.order = list(length_sorted_batches(self.sequences, batch_size))
        self.pad_id = tokenizer.pad_token_id or 0
        self.weights = (None if groups is None else
                        balanced_weights([len(s) for s in self.sequences], groups))

    def __iter__(self):
        for batch in self.order:
            ids, mask = pad_right([self.sequences[i] for i in batch], torch.device("cpu"), self.pad_id)
            w = None if self.weights is None else torch.tensor([self.weights[i] for i in batch])
            yield ids, mask, w


def _dense_targets(model: nn.Module, family: Family, runs: Sequence[RemovedRun], batches: _Batches
                   ) -> list[list[torch.Tensor]]:
    """Per run, per batch: the dense base's hidden state after the run's last removed layer at the
    real (attention-masked) tokens, (n_tokens, h) in the model's dtype on its device."""
    layers = DecoderLayout.of_family(family).layers(model)
    stack, device = DecoderLayout.of_family(family).stack(model), model_device(model)
    wanted = {run.removed[-1] for run in runs}
    last = max(wanted)
    captured: dict[int, torch.Tensor] = {}

    def hook(index: int):
        def fn(module: nn.Module, args: tuple, output: Any) -> None:
            captured[index] = _output(output)
            if index == last:
                raise _Stop

        return fn

    out: list[list[torch.Tensor]] = [[] for _ in runs]
    handles = [layers[i].register_forward_hook(hook(i)) for i in sorted(wanted)]
    try:
        with torch.inference_mode():
            for input_ids, mask, _ in batches:
                captured.clear()
                _run(stack, input_ids.to(device), mask.to(device))
                keep = mask.to(device).bool()
                for k, run in enumerate(runs):
                    out[k].append(captured[run.removed[-1]][keep].clone())
    finally:
        for handle in handles:
            handle.remove()
    return out


def _candidate_sums(model: nn.Module, family: Family, position: int, where: str, batches: _Batches,
                    targets: list[torch.Tensor] | int, rows: Rows | None = None) -> NormalEquations:
    """Runs `model` up to its layer at `position` (the kept layer before the run) and sums the
    normal equations of M T ~ H - Y, with M that layer's MLP output and Y the residual stream M is
    added to. `targets`: H per batch (precomputed), or the position in `model` whose output is H
    (the run put back in the same model, so Y and H come from one pass). `rows`, where given,
    also keeps M, Y and H (the cosine objective needs the rows, not only the sums)."""
    layers = DecoderLayout.of_family(family).layers(model)
    layer = layers[position]
    down_projection(layer, where)
    norm = getattr(layer, "post_attention_layernorm", None)
    if not isinstance(norm, nn.Module):
        raise RepairError(f"{where} has no `post_attention_layernorm` before its MLP; linear repair "
                          "supports Llama-style decoder layers (Llama, Mistral, Qwen2)")
    stack, device = DecoderLayout.of_family(family).stack(model), model_device(model)
    target_layer = layers[targets] if isinstance(targets, int) else None
    seen: dict[str, torch.Tensor] = {}

    def residual_hook(module: nn.Module, args: tuple) -> None:
        seen["y"] = args[0]

    def mlp_hook(module: nn.Module, args: tuple, output: Any) -> None:
        seen["m"] = _output(output)

    def layer_hook(module: nn.Module, args: tuple, output: Any) -> None:
        seen["out"] = _output(output)
        if target_layer is None:
            raise _Stop

    def target_hook(module: nn.Module, args: tuple, output: Any) -> None:
        seen["h"] = _output(output)
        raise _Stop

    eq = NormalEquations()
    handles = [norm.register_forward_pre_hook(residual_hook), layer.mlp.register_forward_hook(mlp_hook),
               layer.register_forward_hook(layer_hook)]
    if target_layer is not None:
        handles.append(target_layer.register_forward_hook(target_hook))
    try:
        with torch.inference_mode():
            for b, (input_ids, mask, weights) in enumerate(batches):
                seen.clear()
                _run(stack, input_ids.to(device), mask.to(device))
                keep = mask.to(device).bool()
                y, m, out = seen["y"][keep], seen["m"][keep], seen["out"][keep]
                w = None if weights is None else weights.to(device)[:, None].expand(keep.shape)[keep]
                if b == 0 and not torch.allclose((y + m).float(), out.float(), rtol=1e-2, atol=1e-3):
                    raise RepairError(f"{where}: its output is not residual + MLP output, so a map on "
                                      "the MLP output cannot repair it; use this model without --repair")
                h = seen["h"][keep] if target_layer is not None else targets[b]
                eq.add(m, h.double() - y.double(), w)
                if rows is not None:
                    rows.add(m, y, h, w)
    finally:
        for handle in handles:
            handle.remove()
    return eq


def restored(genome: Genome, run: RemovedRun) -> Genome:
    """`genome` with the run's layers put back as the base's own: the candidate before this cut."""
    layers = sorted([*genome.layers, *(LayerSpec(i) for i in run.removed)], key=lambda s: s.layer_idx)
    return Genome(genome.n_layers, genome.n_candidates, tuple(layers), method=genome.method)


# ---- the public entry point ---------------------------------------------------------------------
def apply_maps(model: nn.Module, family: Family, genome: Genome, maps: dict[int, torch.Tensor]) -> nn.Module:
    """Swap fused copies of the mapped layers into `model` (a stitched model of `genome`)."""
    layers = DecoderLayout.of_family(family).layers(model)
    for layer_idx, t in maps.items():
        position = genome.kept.index(layer_idx)
        layers[position] = fuse_map(layers[position], t)
    return model


def repair_model(
    family: Family,
    genome: Genome,
    calibration_texts: Sequence[str],
    *,
    ridge: float = DEFAULT_RIDGE,
    target: str = TARGET,
    objective: str = OBJECTIVE,
    cosine_steps: int = COSINE_STEPS,
    strength: float = STRENGTH,
    balance: str = BALANCE,
    text_groups: Sequence[int] | None = None,
    max_length: int = 256,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    dtype: str = "float32",
    stitcher: Any = None,
    tokenizer: Any = None,
) -> tuple[nn.Module, RepairInfo]:
    """The tailored model of `genome` with every removed run (not starting at layer 0) repaired.

    Runs are fitted in order, each on the model with the earlier ones already repaired. Pass a
    `stitcher` (gptailor_merge.materialize.stitch.Stitcher) to reuse its loaded base (then `device` and
    `dtype` are the stitcher's, not these) and its `tokenizer`. The returned model is the
    stitcher's model object, valid until its next `build`: score it with
    `scoring.evaluate_model`, never through `Evaluator.score(genome)` or a `PrefixReuse` keyed by
    the genome, which would give (or replay cached states of) the unrepaired layers. A genome
    without removals returns the stitched model unchanged. `strength` < 1 shrinks every fitted
    map toward the identity after all runs are fitted (`shrink_map`). `balance="tokens"` weighs
    each calibration task equally (`text_groups`: each text's task, `repair.calibration.repair_groups`).
    """
    from transformers import AutoTokenizer

    from gptailor_merge.materialize.stitch import Stitcher

    if not calibration_texts:
        raise RepairError("no calibration text: repair needs at least one search-split text")
    stitcher = stitcher or Stitcher(family, device=device, dtype=dtype)
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(family.base.path)
    runs, skipped = removed_runs(genome)
    for run in skipped:
        logger.warning("layers %s: a run starting at layer 0 has no kept layer before it; left unrepaired",
                       list(run))
    if target not in TARGETS:
        raise RepairError(f"unknown repair target {target!r}; use one of {', '.join(TARGETS)}")
    if objective not in OBJECTIVES:
        raise RepairError(f"unknown repair objective {objective!r}; use one of {', '.join(OBJECTIVES)}")
    if balance not in BALANCES:
        raise RepairError(f"unknown calibration balance {balance!r}; use one of {', '.join(BALANCES)}")
    if balance == "tokens" and text_groups is None:
        raise RepairError("balance 'tokens' needs each calibration text's task (text_groups)")
    settings = dict(ridge=float(ridge), n_texts=len(calibration_texts), max_length=max_length,
                    batch_size=batch_size, target=target, objective=objective,
                    strength=check_strength(strength), balance=balance)  # bad settings fail before the fit
    if not runs:
        return stitcher.build(genome), RepairInfo({}, (), tuple(skipped), **settings)
    batches = _Batches(tokenizer, calibration_texts, batch_size, max_length,
                       text_groups if balance == "tokens" else None)
    targets: list[Any] = [None] * len(runs)
    if target == "base":
        dense = Genome.base_only(family.n_layers, family.n_candidates)
        targets = _dense_targets(stitcher.build(dense), family, runs, batches)
    maps: dict[int, torch.Tensor] = {}
    fits: list[RunFit] = []
    for k, run in enumerate(runs):
        where = f"layer {run.layer_idx}"
        rows = Rows() if objective == "cosine" else None
        if target == "base":
            model = apply_maps(stitcher.build(genome), family, genome, maps)
            eq = _candidate_sums(model, family, run.position, where, batches, targets[k], rows)
            targets[k] = None  # free the run's targets
        else:
            put_back = restored(genome, run)
            model = apply_maps(stitcher.build(put_back), family, put_back, maps)
            eq = _candidate_sums(model, family, run.position, where, batches,
                                 put_back.kept.index(run.removed[-1]), rows)
        if k == 0 and eq.n_rows < TOKENS_PER_DIM * eq.gram.shape[0]:
            logger.warning("repair: %d calibration tokens for a %d x %d map (under %d per dimension); the "
                           "maps may overfit them and hurt other text: give more calibration texts",
                           eq.n_rows, eq.gram.shape[0], eq.gram.shape[0], TOKENS_PER_DIM)
        t = fit_linear_map(eq, ridge)
        cosines: tuple[float | None, float | None] = (None, None)
        if rows is not None:
            t, *cosines = fit_cosine_map(rows, t, cosine_steps)
            t = t.to(eq.gram.device)
            rows = None
        identity = torch.eye(t.shape[0], dtype=t.dtype, device=t.device)
        fit = RunFit(run, eq.n_rows, eq.residual(identity), eq.residual(t), *cosines)
        logger.info("repair of layers %s into layer %d: relative error %.4f -> %.4f on %d tokens%s",
                    list(run.removed), run.layer_idx, fit.error_unrepaired, fit.error_repaired, fit.n_tokens,
                    "" if fit.cosine_fit is None else
                    f"; cosine distance {fit.cosine_lstsq:.5f} (least squares) -> {fit.cosine_fit:.5f}")
        maps[run.layer_idx] = t.cpu()
        fits.append(fit)
    maps = {i: shrink_map(t, strength) for i, t in maps.items()}
    model = apply_maps(stitcher.build(genome), family, genome, maps)
    return model, RepairInfo(maps, tuple(fits), tuple(skipped), **settings)
