"""The architecture adapter end to end on tiny Llama, Mistral, Qwen2 and Qwen3 (a `layer_types`
config whose layers differ: sliding-window attention from layer 2 on): stitcher = mergekit where
mergekit 0.1.5 can (else a clear error), the `layer_types` rewrite, prefix reuse bitwise, a search."""

import pytest
import torch
from conftest import write_word_tasks  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM

from gptailor_merge.core.errors import RecipeError
from gptailor_merge.core.genome import Genome, LayerSpec
from gptailor_merge.demo.synthetic import make_synthetic_family
from gptailor_merge.family.architecture import DecoderLayout, LayerwiseForward, tailored_config
from gptailor_merge.family.family import Family
from gptailor_merge.materialize.mergekit_backend import materialize_with_mergekit
from gptailor_merge.materialize.prefix import PrefixCachedLM, PrefixReuse
from gptailor_merge.materialize.recipe import FamilyRefs, genome_to_recipe
from gptailor_merge.materialize.stitch import Stitcher

L, K = 4, 3
ARCHS = ("llama", "mistral", "qwen2", "qwen3")
LAYER_TYPES_ARCHS = ("qwen2", "qwen3")  # mergekit 0.1.5 keeps their old layer_types list
ALL_KEPT = Genome(L, K, (LayerSpec(0, (1,)), LayerSpec(1, (0, 2), lam=0.7), LayerSpec(2), LayerSpec(3, (2,))))
REMOVAL = Genome(L, K, (LayerSpec(0), LayerSpec(2, (0, 1), lam=0.6), LayerSpec(3, (1,))))
SEQUENCE = [Genome.base_only(L, K, removed=[3]), Genome.base_only(L, K, removed=[1]), REMOVAL, ALL_KEPT,
            Genome(L, K, (LayerSpec(0), LayerSpec(2), LayerSpec(3, (1,))))]


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    root = tmp_path_factory.mktemp("arch_families")
    return {arch: Family.load(*make_synthetic_family(root / arch, arch=arch, n_layers=L, seed=2))
            for arch in ARCHS}


@pytest.fixture(scope="module")
def inputs():
    return torch.randint(3, 250, (2, 16), generator=torch.Generator().manual_seed(1))


def _logits(model, x, mask=None):
    with torch.inference_mode():
        return model(input_ids=x, attention_mask=mask, use_cache=False).logits.float()


@pytest.mark.parametrize("arch", ARCHS)
def test_stitcher_equals_mergekit_or_mergekit_says_why_not(arch, families, tmp_path, inputs):
    family = families[arch]
    assert DecoderLayout.of_family(family).layers_path == "model.layers"
    for name, genome in (("all_kept", ALL_KEPT), ("removal", REMOVAL)):
        recipe = genome_to_recipe(genome, FamilyRefs.of(family))
        stitched = Stitcher(family).build(genome)
        if arch in LAYER_TYPES_ARCHS and genome.n_kept < L:
            with pytest.raises(RecipeError, match="layer_types.*--backend stitch"):
                materialize_with_mergekit(recipe, tmp_path / name)
            assert not (tmp_path / name).exists()
            continue
        merged = AutoModelForCausalLM.from_pretrained(materialize_with_mergekit(recipe, tmp_path / name)).eval()
        assert (_logits(merged, inputs) - _logits(stitched, inputs)).abs().max().item() <= 1e-5, name


def test_layer_types_follow_the_kept_source_layers(families, inputs):
    """Removing layer 1 of full, full, sliding, sliding keeps full, sliding, sliding: checked against
    a model built from a config that states those types, not from the stitcher's own rewrite."""
    family = families["qwen3"]
    genome = Genome.base_only(L, K, removed=[1])
    stitched = Stitcher(family).build(genome)
    assert stitched.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    base = AutoModelForCausalLM.from_pretrained(family.base.path).eval().state_dict()
    renamed = {}
    for key, value in base.items():
        if key.startswith("model.layers."):
            idx, rest = key[len("model.layers."):].split(".", 1)
            if int(idx) in genome.kept:
                renamed[f"model.layers.{genome.kept.index(int(idx))}.{rest}"] = value
        else:
            renamed[key] = value

    def reference(types):
        config = AutoConfig.from_pretrained(family.base.path)
        config.num_hidden_layers, config.layer_types = 3, types
        model = AutoModelForCausalLM.from_config(config).eval()
        model.load_state_dict(renamed)
        return _logits(model, inputs)

    assert torch.equal(_logits(stitched, inputs), reference(["full_attention", "sliding_attention", "sliding_attention"]))
    # the check can fail: the first three types (what a truncating rewrite would give) differ
    assert not torch.equal(_logits(stitched, inputs), reference(["full_attention", "full_attention", "sliding_attention"]))
    assert tailored_config(family.base.config, (0, 2, 3)).layer_types == stitched.config.layer_types


@pytest.mark.parametrize("arch", ARCHS)
def test_prefix_reuse_is_bitwise_the_plain_model(arch, families, inputs):
    stitcher, reuse = Stitcher(families[arch]), PrefixReuse(1 << 24)
    mask = torch.ones_like(inputs)
    mask[1, 11:] = 0  # a right-padded row
    for genome in SEQUENCE + SEQUENCE[:2]:
        model = stitcher.build(genome)
        wrapped = reuse.wrap(model, genome)
        assert isinstance(wrapped, PrefixCachedLM)
        assert torch.equal(_logits(model, inputs, mask), wrapped(input_ids=inputs, attention_mask=mask).logits)
    assert reuse.stats.skipped > 0


def test_an_architecture_the_layerwise_forward_does_not_reproduce_gets_the_plain_model(tmp_path):
    family = Family.load(*make_synthetic_family(tmp_path / "gemma", arch="gemma", n_layers=L, seed=2))
    genome = Genome.base_only(L, K, removed=[1])
    model = Stitcher(family).build(genome)
    assert not LayerwiseForward.supports(model)  # Gemma scales its embeddings: not the same forward
    assert PrefixReuse().wrap(model, genome) is model


@pytest.mark.parametrize("arch", ARCHS)
def test_a_short_search_runs(arch, families, tmp_path):
    from gptailor_merge.core.config import RunConfig
    from gptailor_merge.run.optimize import optimize

    family = families[arch]
    write_word_tasks(tmp_path)
    config = RunConfig.from_dict({
        "family": {"base": str(family.base.path), "candidates": [str(c.path) for c in family.candidates]},
        "target": {"layers": 3},
        "tasks": [str(tmp_path / "mc.jsonl"), str(tmp_path / "txt.jsonl")],
        "search": {"n_trials": 4, "max_examples": 6, "merge_methods": ["task_arithmetic", "ties"]},
        "eval": {"batch_size": 8, "max_length": 32},
        "out_dir": str(tmp_path / "run"),
    })
    # held-out materializes with mergekit, which cannot cut a layer_types config (tested above)
    outcome = optimize(config, progress=False, heldout=False)
    assert outcome.summary["search"]["evaluated"] >= 4
    assert Genome.from_dict(outcome.summary["best_genome"]).n_kept == 3
