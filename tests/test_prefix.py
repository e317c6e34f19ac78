"""Prefix reuse gives bitwise the same logits and scores, stays under its byte bound, counts skips."""

import random

import pytest
import torch
from transformers import AutoTokenizer

from gptailor_merge.core.errors import ConfigError
from gptailor_merge.core.genome import Genome, LayerSpec
from gptailor_merge.materialize.prefix import PrefixCache, PrefixCachedLM, PrefixReuse, layer_keys
from gptailor_merge.materialize.stitch import Stitcher
from gptailor_merge.scoring.batching import pad_right
from gptailor_merge.scoring.examples import ChoiceExample, TextExample
from gptailor_merge.scoring.task import make_task
from gptailor_merge.search.evaluator import Evaluator

L, K = 4, 3
WORDS = "the cat dog sat ran on mat log fox jumps over lazy quick brown".split()
# a search-like sequence: shared leading layers, then a first difference at varying depths
SEQUENCE = [
    Genome.base_only(L, K, removed=[3]),
    Genome.base_only(L, K, removed=[2]),  # shares layers 0, 1 with the first
    Genome(L, K, (LayerSpec(0), LayerSpec(1), LayerSpec(3, (1,)))),  # shares 0, 1 again
    Genome(L, K, (LayerSpec(0, (0, 2), lam=0.5), LayerSpec(1), LayerSpec(2))),  # a merge first
    Genome(L, K, (LayerSpec(0, (0, 2), lam=0.5), LayerSpec(1), LayerSpec(3, (2,)))),  # shares 2
    Genome(L, K, (LayerSpec(0, (0, 2), lam=0.5), LayerSpec(1), LayerSpec(2, (0, 1), lam=0.8))),
    Genome(L, K, (LayerSpec(0), LayerSpec(1), LayerSpec(3, (1,)))),  # an exact repeat
    Genome(L, K, (LayerSpec(1, (0,)), LayerSpec(2), LayerSpec(3, (0, 1, 2), lam=0.6, density=0.5)),
           method="ties"),
    # a selection first: in a passthrough genome it is C's layer, next to a merge it is B + (C - B)
    Genome(L, K, (LayerSpec(0, (1,)), LayerSpec(1), LayerSpec(2))),
    Genome(L, K, (LayerSpec(0, (1,)), LayerSpec(1), LayerSpec(2, (0, 1), lam=0.8))),
]


def _tasks():
    rng = random.Random(0)
    choice = [ChoiceExample(" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 7))),
                            tuple(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
                                  for _ in range(3)), rng.randrange(3)) for _ in range(14)]
    text = [TextExample(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))))
            for _ in range(10)]
    return [make_task("mc", choice[:10], choice[10:], "test"),
            make_task("txt", text[:6], text[6:], "test")]


def _batch(seed: int, rows: int = 3, width: int = 11):
    rng = random.Random(seed)
    sequences = [[rng.randrange(3, 250) for _ in range(rng.randint(2, width))] for _ in range(rows)]
    return pad_right(sequences, torch.device("cpu"), pad_id=2)


def _widen(tensor, width, value):
    """Right-pad a (B, T) tensor with `value` to (B, width)."""
    return torch.nn.functional.pad(tensor, (0, width - tensor.shape[1]), value=value)


def _plain_logits(model, input_ids, attention_mask):
    with torch.inference_mode():
        return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_scores_with_prefix_cache_equal_plain_scores_bitwise(arch, request):
    family = request.getfixturevalue(f"{arch}_family")
    tokenizer = AutoTokenizer.from_pretrained(family.base.path)
    tasks = _tasks()
    plain = Evaluator(Stitcher(family), tokenizer, tasks, batch_size=4, max_length=32,
                      prefix_cache_bytes=0)
    cached = Evaluator(Stitcher(family), tokenizer, tasks, batch_size=4, max_length=32)
    for genome in SEQUENCE:
        for n_examples in (3, None):
            a = plain.score(genome, "search", n_examples)
            b = cached.score(genome, "search", n_examples)
            assert {k: v.metrics for k, v in a.tasks.items()} == {k: v.metrics for k, v in b.tasks.items()}
    assert plain.prefix is None
    assert cached.prefix.stats.skipped > 0 and cached.prefix.stats.computed > 0


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_logits_with_prefix_cache_equal_the_plain_models(arch, request):
    family = request.getfixturevalue(f"{arch}_family")
    stitcher, reuse = Stitcher(family), PrefixReuse(1 << 24)
    batches = [_batch(seed) for seed in range(3)]
    for genome in SEQUENCE:
        model = stitcher.build(genome)
        wrapped = reuse.wrap(model, genome)
        assert isinstance(wrapped, PrefixCachedLM)
        for input_ids, attention_mask in batches:
            want = _plain_logits(model, input_ids, attention_mask)
            got = wrapped(input_ids=input_ids, attention_mask=attention_mask).logits
            assert torch.equal(want, got), genome.describe()
    assert reuse.stats.hits > 0


def test_skip_counter_counts_layers_before_the_first_difference(llama_family):
    stitcher, reuse = Stitcher(llama_family), PrefixReuse(1 << 24)
    input_ids, attention_mask = _batch(0)

    def run(genome):
        reuse.wrap(stitcher.build(genome), genome)(input_ids=input_ids, attention_mask=attention_mask)
        return reuse.stats.computed, reuse.stats.skipped

    assert run(SEQUENCE[0]) == (3, 0)  # nothing cached yet
    assert run(SEQUENCE[1]) == (3 + 1, 2)  # layers 0, 1 shared, layer 3 computed
    assert run(SEQUENCE[2]) == (4 + 1, 4)  # same two again
    assert run(SEQUENCE[3]) == (5 + 3, 4)  # merged first layer: nothing shared
    other_ids, other_mask = _batch(1)
    reuse.wrap(stitcher.build(SEQUENCE[0]), SEQUENCE[0])(input_ids=other_ids, attention_mask=other_mask)
    assert (reuse.stats.computed, reuse.stats.skipped) == (8 + 3, 4)  # another batch: a miss
    assert reuse.stats.skip_fraction == pytest.approx(4 / 15)


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_a_promoted_candidate_repeats_its_rung_aligned_batches_from_the_cache(arch, request):
    family = request.getfixturevalue(f"{arch}_family")
    tokenizer = AutoTokenizer.from_pretrained(family.base.path)
    tasks, rungs = _tasks(), (2, 6)
    plain = Evaluator(Stitcher(family), tokenizer, tasks, batch_size=4, max_length=32,
                      prefix_cache_bytes=0, rungs=rungs)
    cached = Evaluator(Stitcher(family), tokenizer, tasks, batch_size=4, max_length=32, rungs=rungs)
    genome = SEQUENCE[1]
    cached.score(genome, "search", 2)
    first = cached.prefix.stats.computed
    assert first > 0 and cached.prefix.stats.skipped == 0
    promoted = cached.score(genome, "search", 6)
    assert cached.prefix.stats.skipped == first  # every layer pass of rung 1 came from the cache
    assert promoted == plain.score(genome, "search", 6)  # bitwise the same scores
    assert cached.boundaries("search") == rungs and cached.boundaries("heldout") == ()


def test_base_layers_share_keys_across_merge_methods_but_selections_do_not():
    with_merge = Genome(L, K, (LayerSpec(0), LayerSpec(1, (2,)), LayerSpec(2, (0, 1))))
    without = Genome(L, K, (LayerSpec(0), LayerSpec(1, (2,)), LayerSpec(2)))
    a, b = layer_keys(with_merge), layer_keys(without)
    assert a[0] == b[0]  # the base's own module either way
    assert a[1] != b[1]  # B + 1 * (C - B) under task arithmetic is not bitwise C


def test_eviction_keeps_the_cache_under_its_byte_bound(llama_family):
    stitcher = Stitcher(llama_family)
    one_entry = 3 * 11 * llama_family.base.config.hidden_size * 4  # (B, T, H) float32
    reuse = PrefixReuse(int(2.5 * one_entry))
    for seed in range(4):
        input_ids, attention_mask = _batch(seed, width=11)
        # every batch exactly 11 wide (pad 2 / mask 0 on the right), so every entry is one_entry bytes
        input_ids, attention_mask = _widen(input_ids, 11, 2), _widen(attention_mask, 11, 0)
        for genome in SEQUENCE:
            model = stitcher.build(genome)
            got = reuse.wrap(model, genome)(input_ids=input_ids, attention_mask=attention_mask).logits
            assert torch.equal(got, _plain_logits(model, input_ids, attention_mask))
            assert reuse.cache.nbytes <= reuse.cache.max_bytes
            assert len(reuse.cache) <= 2
    assert reuse.stats.evicted > 0
    assert reuse.cache.nbytes == sum(t.numel() * t.element_size() for t in reuse.cache._entries.values())


def test_stride_keeps_checkpoints_at_its_multiples_and_at_full_depth():
    cache = PrefixCache(1 << 20, stride=2)
    assert [d for d in range(1, 8) if cache.wants(d, 7)] == [2, 4, 6, 7]
    assert not PrefixCache(0).wants(1, 6)


def test_prefix_ids_are_equal_exactly_for_equal_prefixes():
    cache = PrefixCache(1 << 20)
    a = cache.prefix_ids(layer_keys(SEQUENCE[0]))
    b = cache.prefix_ids(layer_keys(SEQUENCE[1]))
    assert a[:2] == b[:2] and a[2] != b[2]
    assert cache.prefix_ids(layer_keys(SEQUENCE[2])) == cache.prefix_ids(layer_keys(SEQUENCE[6]))


def test_zero_bytes_turns_prefix_reuse_off(llama_family):
    genome = SEQUENCE[0]
    model = Stitcher(llama_family).build(genome)
    assert PrefixReuse(0).wrap(model, genome) is model


def test_bad_cache_settings_are_clear_errors():
    with pytest.raises(ConfigError, match="max_bytes must be >= 0"):
        PrefixCache(-1)
    with pytest.raises(ConfigError, match="stride must be >= 1"):
        PrefixCache(10, stride=0)


@pytest.mark.parametrize("size", [0, 4096])
def test_run_config_sets_the_evaluators_prefix_cache(llama_family, size):
    """`eval.prefix_cache_bytes` is the one setting: build_evaluator sizes the cache from it."""
    from gptailor_merge.core.config import DEFAULT_PREFIX_CACHE_BYTES, RunConfig
    from gptailor_merge.search.evaluator import build_evaluator

    assert RunConfig().eval.prefix_cache_bytes == DEFAULT_PREFIX_CACHE_BYTES
    config = RunConfig.model_validate({"eval": {"prefix_cache_bytes": size}})
    evaluator = build_evaluator(config, llama_family, _tasks())
    assert (evaluator.prefix is None) if size == 0 else (evaluator.prefix.cache.max_bytes == size)
    with pytest.raises(ValueError, match="prefix_cache_bytes"):
        RunConfig.model_validate({"eval": {"prefix_cache_bytes": -1}})
