"""A planted optimum: a synthetic family whose best genome at the target is known by construction.

A teacher model T (6 layers, peaked output) generates the text. Layers 2 and 4 of T are exact
identities (zero attention output and MLP down projections), so removing them costs nothing; for
every other layer exactly one fine-tune holds T's layer and the others (and the base) hold
perturbed copies. The planted genome (remove 2 and 4, select the right fine-tune per layer) is T
itself, the best model of T's text. The search, without seeds, must find it.
"""

from __future__ import annotations

import pytest
import torch

from gptailor_merge.core.genome import Genome

N_LAYERS, IDENTITY, HIDDEN = 6, (2, 4), 32


def _right(layer: int) -> int:
    return layer % 3


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from transformers import AutoModelForCausalLM, LlamaConfig

    from gptailor_merge.family.family import Family
    from gptailor_merge.scoring.examples import TextExample
    from gptailor_merge.scoring.task import make_task
    root = tmp_path_factory.mktemp("planted")
    tokenizer = _word_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
                         num_hidden_layers=N_LAYERS, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, tie_word_embeddings=False, initializer_range=0.25,
                         bos_token_id=0, eos_token_id=1, pad_token_id=2)
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for i in IDENTITY:
            teacher.model.layers[i].self_attn.o_proj.weight.zero_()
            teacher.model.layers[i].mlp.down_proj.weight.zero_()
    state = {k: v.clone() for k, v in teacher.state_dict().items()}

    def member(name: str, keep_layer) -> str:
        gen = torch.Generator().manual_seed(sum(map(ord, name)))
        model = AutoModelForCausalLM.from_config(config)
        out = {}
        for key, value in state.items():
            out[key] = value
            if ".layers." in key:
                layer = int(key.split(".layers.")[1].split(".")[0])
                if not keep_layer(layer) and value.dim() == 2:
                    out[key] = value + 0.6 * value.std() * torch.randn(value.shape, generator=gen)
        model.load_state_dict(out)
        path = root / name
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        return str(path)

    base = member("base", lambda layer: layer in IDENTITY)
    cands = [member(f"cand{j}", lambda layer, j=j: layer in IDENTITY or _right(layer) == j)
             for j in range(3)]
    with torch.no_grad():
        ids = _sample(teacher, 80, 24)
    texts = [TextExample(" ".join(VOCAB[t] for t in row[1:].tolist())) for row in ids]
    assert tokenizer.encode(texts[0].text) == ids[0, 1:].tolist()  # scored exactly as sampled
    task = make_task("teacher_text", texts[:60], texts[60:], "planted")
    kept = [i for i in range(N_LAYERS) if i not in IDENTITY]
    genome = Genome.from_choices(N_LAYERS, 3, IDENTITY, [(_right(i),) for i in range(N_LAYERS)])
    assert genome.kept == tuple(kept)
    return Family.load(base, cands), tokenizer, task, genome


VOCAB = ["<s>", "</s>", "<pad>", *(f"w{i}" for i in range(3, 64))]


def _word_tokenizer():
    """One token per word, so text sampled from the teacher is scored on exactly its token ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")


def _sample(model, n: int, length: int) -> torch.Tensor:
    """Ancestral sampling from `model` over its whole vocabulary, after BOS (id 0)."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.zeros((n, 1), dtype=torch.long)
    for _ in range(length):
        logits = model(ids).logits[:, -1].float()
        ids = torch.cat([ids, torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)], dim=1)
    return ids


def _evaluator(family, tokenizer, task, rungs):
    from gptailor_merge.materialize.stitch import Stitcher
    from gptailor_merge.search.evaluator import Evaluator

    return Evaluator(Stitcher(family), tokenizer, [task], batch_size=32, max_length=32, rungs=rungs)


def test_the_planted_genome_is_the_best_of_its_neighbourhood(planted):
    from gptailor_merge.search.neighbours import neighbour
    from gptailor_merge.search.space import SearchSpace

    family, tokenizer, task, genome = planted
    ev = _evaluator(family, tokenizer, task, (60,))
    space = SearchSpace(N_LAYERS, 3, N_LAYERS - len(IDENTITY))
    best = ev.rung_result(genome, "search", 60).retention
    rng = __import__("numpy").random.default_rng(0)
    for _ in range(12):
        other = neighbour(genome, space, rng)
        assert ev.rung_result(other, "search", 60).retention < best


def test_search_without_seeds_finds_the_planted_genome(planted, tmp_path):
    from gptailor_merge.search.loop import run_search
    from gptailor_merge.search.space import SearchSpace

    family, tokenizer, task, genome = planted
    rungs = (20, 60)
    space = SearchSpace(N_LAYERS, 3, N_LAYERS - len(IDENTITY))
    target = _evaluator(family, tokenizer, task, rungs).rung_result(genome, "search", 60).retention
    runs = []
    for attempt in range(2):  # the same seed twice: the same trials, in the same order
        ev = _evaluator(family, tokenizer, task, rungs)
        result = run_search(space, ev, tmp_path / f"run{attempt}", optimizer="DiscreteLenglerOnePlusOne",
                            n_trials=TRIAL_BUDGET, rungs=rungs, seed=0, use_seeds=False,
                            local_fraction=0.5, progress=False)
        runs.append(result)
    best = runs[0].best
    assert [t.genome_id for t in runs[0].trials] == [t.genome_id for t in runs[1].trials]
    assert best.genome_id == genome.genome_id or best.retention >= target * (1 - TOLERANCE), (
        best.genome, best.retention, target)


TRIAL_BUDGET = 300
TOLERANCE = 0.01  # retention_sym within 1% of the planted genome's
