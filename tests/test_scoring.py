"""Specification of the scorer: perplexity, multiple choice, batching, fidelity, objectives, lm-eval."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import json  # noqa: E402
import math  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from torch import nn  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from gptailor_merge.core.errors import ConfigError  # noqa: E402
from gptailor_merge.scoring.evaluate import (  # noqa: E402
    Score,
    TaskScore,
    evaluate_model,
    load_model_folder,
    score_to_json,
    task_loss,
)
from gptailor_merge.scoring.examples import ChoiceExample, TextExample  # noqa: E402
from gptailor_merge.scoring.multiple_choice import (  # noqa: E402
    encode_pair,
    loglikelihoods,
    multiple_choice,
    multiple_choice_details,
)
from gptailor_merge.scoring.objectives import (  # noqa: E402
    chance_level_tasks,
    mean_of_ratios,
)
from gptailor_merge.scoring.perplexity import perplexity  # noqa: E402
from gptailor_merge.scoring.task import make_task  # noqa: E402

SENTENCES = [
    "The cat sat on the mat.", "A dog runs in the park!", "Is the sky blue? yes it is.",
    "Two plus two is four, not five.", "The quick brown fox jumps over the lazy dog.",
]
TEXTS = ["The cat sat on the mat.", "A dog runs", "Two plus two is four, not five. The quick fox!",
         "sky", "The lazy dog runs in the park, the cat sat."]
MC = [
    ChoiceExample("The cat sat on the", ("mat", "dog", "sky blue"), 0),
    ChoiceExample("Is the sky blue?", ("yes it is.", "no"), 0),
    ChoiceExample("Two plus two is ", ("four", "five", "the lazy dog", "park"), 0),
    ChoiceExample("A dog runs in the", ("park!", "mat."), 1),
    ChoiceExample("The quick brown fox jumps over the", ("lazy dog.", "cat", "sky"), 2),
]


@pytest.fixture(scope="session")
def tokenizer():
    """A byte-level BPE (vocab 300) that adds BOS like Llama's tokenizer."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(SENTENCES * 4, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")


@pytest.fixture(scope="session")
def model(tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


class FixedLogits(nn.Module):
    """A model whose logits are the same bias at every position; not a `PreTrainedModel`."""

    def __init__(self, vocab_size: int, favoured: list[int] = ()) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        self.bias.data[list(favoured)] = 10.0

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=self.bias.expand(*input_ids.shape, -1))


def direct_loglikelihood(model, tokenizer, context, continuation):
    """The obvious unbatched computation, for comparison."""
    context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    return sum(log_probs[len(context_ids) - 1 + k, token].item()
               for k, token in enumerate(continuation_ids))


def test_perplexity_equals_labels_loss_single_and_token_weighted(model, tokenizer):
    losses, counts = [], []
    for text in TEXTS:
        ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer.encode(text, add_special_tokens=False)]])
        with torch.no_grad():
            losses.append(model(ids, labels=ids).loss.item())
        counts.append(ids.shape[1] - 1)
        single = perplexity(model, tokenizer, [text])
        assert single["nll"] == pytest.approx(losses[-1], abs=1e-5)
        assert single["ppl"] == pytest.approx(math.exp(losses[-1]), rel=1e-5)
        assert single["tokens"] == counts[-1] and single["n"] == 1
    combined = perplexity(model, tokenizer, TEXTS, batch_size=2)
    expected = sum(loss * n for loss, n in zip(losses, counts, strict=True)) / sum(counts)
    assert combined["nll"] == pytest.approx(expected, abs=1e-5)
    assert combined["tokens"] == sum(counts) and combined["n"] == len(TEXTS)


def test_perplexity_truncates_to_max_length_including_bos(model, tokenizer):
    text = TEXTS[2]
    ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer.encode(text, add_special_tokens=False)][:6]])
    with torch.no_grad():
        expected = model(ids, labels=ids).loss.item()
    result = perplexity(model, tokenizer, [text], max_length=6)
    assert result["tokens"] == 5 and result["nll"] == pytest.approx(expected, abs=1e-5)


def test_encode_pair_moves_trailing_context_space_onto_the_continuation(tokenizer):
    assert encode_pair(tokenizer, "The cat ", "sat") == encode_pair(tokenizer, "The cat", " sat")
    context_ids, continuation_ids = encode_pair(tokenizer, "The cat", " sat on the mat.")
    assert context_ids == tokenizer.encode("The cat")
    assert context_ids + continuation_ids == tokenizer.encode("The cat sat on the mat.")


def test_loglikelihoods_equal_a_direct_unbatched_loop(model, tokenizer):
    requests = [(ex.context, " " + choice) for ex in MC for choice in ex.choices]
    expected = [direct_loglikelihood(model, tokenizer, c, x) for c, x in requests]
    for batch_size in (1, 3, 64):
        got = loglikelihoods(model, tokenizer, requests, batch_size=batch_size)
        assert got == pytest.approx(expected, abs=1e-5)


def test_multiple_choice_picks_the_continuation_the_model_favours(tokenizer):
    favoured = encode_pair(tokenizer, "Is the sky blue?", " yes it is.")[1]
    rigged = FixedLogits(len(tokenizer), favoured)
    right = [ChoiceExample("Is the sky blue?", ("no", "yes it is.", "lazy dog"), 1)]
    wrong = [ChoiceExample("Is the sky blue?", ("no", "yes it is.", "lazy dog"), 2)]
    got_right, got_wrong = (multiple_choice(rigged, tokenizer, x) for x in (right, wrong))
    assert {k: got_right[k] for k in ("acc", "acc_norm", "n")} == {"acc": 1.0, "acc_norm": 1.0, "n": 1}
    assert {k: got_wrong[k] for k in ("acc", "acc_norm", "n")} == {"acc": 0.0, "acc_norm": 0.0, "n": 1}
    # the gold choice's cross-entropy over the choices: small when favoured, large when not
    assert got_right["choice_nll"] < math.log(3) < got_wrong["choice_nll"]


def test_acc_norm_divides_loglikelihood_by_choice_length_in_characters(tokenizer):
    uniform = FixedLogits(len(tokenizer))
    example = ChoiceExample("The cat sat on the", ("mat", "quick brown fox jumps"), 0)
    counts = [len(encode_pair(tokenizer, example.context, " " + c)[1]) for c in example.choices]
    lls = loglikelihoods(uniform, tokenizer, [(example.context, " " + c) for c in example.choices])
    assert lls == pytest.approx([-k * math.log(len(tokenizer)) for k in counts], abs=1e-4)
    # fewer tokens wins acc; fewer tokens per character wins acc_norm: here they disagree
    assert counts[0] < counts[1] and counts[0] / 3 > counts[1] / len(example.choices[1])
    # choice_nll = -log softmax(lls)[gold], by hand: log(sum exp(lls)) - lls[0]
    by_hand = math.log(sum(math.exp(v) for v in lls)) - lls[0]
    assert multiple_choice(uniform, tokenizer, [example]) == pytest.approx(
        {"acc": 1.0, "acc_norm": 0.0, "choice_nll": by_hand, "n": 1}, abs=1e-6)
    metrics, per_example = multiple_choice_details(uniform, tokenizer, [example, example])
    assert per_example["choice_nll"] == pytest.approx((by_hand, by_hand), abs=1e-6)


def test_scores_are_identical_across_batch_sizes(model, tokenizer):
    tasks = [make_task("mc", MC[:3], MC[3:], "test"),
             make_task("ppl", [TextExample(t) for t in TEXTS[:3]], [TextExample(t) for t in TEXTS[3:]],
                       "test")]
    scores = [evaluate_model(model, tokenizer, tasks, batch_size=b) for b in (1, 2, 16)]
    for score in scores[1:]:
        assert score.tasks["mc"] == scores[0].tasks["mc"]
        for key in ("nll", "ppl"):
            assert score.tasks["ppl"].metrics[key] == pytest.approx(
                scores[0].tasks["ppl"].metrics[key], abs=1e-5)


def test_boundaries_make_a_small_budgets_batches_open_every_larger_budgets():
    from gptailor_merge.scoring.batching import length_sorted_batches

    lengths = [3, 9, 1, 7, 7, 2, 8, 5, 4, 6, 2, 9]
    sequences = [[5] * n for n in lengths]
    rungs = (2, 5, 12)
    for small, large in ((2, 5), (5, 12), (2, 12)):
        a = list(length_sorted_batches(sequences[:small], 2, rungs))
        b = list(length_sorted_batches(sequences[:large], 2, rungs))
        assert b[: len(a)] == a
        assert sorted(i for batch in b for i in batch) == list(range(large))
    # within a segment, longest first; without boundaries one global sort (a 9 opens it)
    assert list(length_sorted_batches(sequences[:5], 2, rungs)) == [[1, 0], [3, 4], [2]]
    assert next(iter(length_sorted_batches(sequences, 2))) == [1, 11]


def test_boundaries_change_batching_not_scores(model, tokenizer):
    tasks = [make_task("mc", MC, MC[:1], "test"),
             make_task("ppl", [TextExample(t) for t in TEXTS], [TextExample(t) for t in TEXTS[:1]],
                       "test")]
    plain = evaluate_model(model, tokenizer, tasks, batch_size=2)
    cut = evaluate_model(model, tokenizer, tasks, batch_size=2, boundaries=(1, 3))
    assert cut.tasks["mc"].metrics["acc"] == plain.tasks["mc"].metrics["acc"]
    for name, task_score in plain.tasks.items():
        assert cut.tasks[name].metrics == pytest.approx(task_score.metrics, abs=1e-5)


def test_low_budget_score_uses_a_prefix_of_the_examples(model, tokenizer):
    task = make_task("mc", MC, MC[:1], "test")
    low = evaluate_model(model, tokenizer, [task], n_examples=2)
    assert low.n_examples == 2 and low.tasks["mc"].metrics["n"] == 2
    assert low.tasks["mc"].metrics == multiple_choice(model, tokenizer, MC[:2])
    held = evaluate_model(model, tokenizer, [task], split="heldout")
    assert held.split == "heldout" and held.tasks["mc"].metrics["n"] == 1


def test_evaluate_accepts_any_module_returning_logits(tokenizer):
    task = make_task("mc", MC, MC, "test")
    score = evaluate_model(FixedLogits(len(tokenizer)), tokenizer, [task], batch_size=4)
    assert score.tasks["mc"].metrics["n"] == len(MC)


def test_score_to_json_and_task_loss():
    score = Score("search", 10, {"mc": TaskScore("mc", {"acc": 0.75, "acc_norm": 0.5, "n": 10}),
                                 "ppl_x": TaskScore("ppl_x", {"nll": 2.0, "ppl": math.exp(2), "n": 3})})
    payload = score_to_json(score, "pruned")
    assert json.loads(json.dumps(payload)) == payload
    assert payload["model"] == "pruned" and payload["tasks"]["mc"]["acc"] == 0.75
    assert task_loss(score.tasks["mc"], "multiple_choice") == pytest.approx(0.25)
    assert task_loss(score.tasks["ppl_x"], "perplexity") == 2.0


def test_mean_of_ratios_is_kept_only_as_the_old_secondary_number():
    mc = make_task("mc", MC, MC, "test")
    ppl = make_task("ppl_x", [TextExample("a")], [TextExample("b")], "test")
    pruned = Score("heldout", None, {"mc": TaskScore("mc", {"acc": 0.6}),
                                     "ppl_x": TaskScore("ppl_x", {"ppl": 20.0})})
    dense = Score("heldout", None, {"mc": TaskScore("mc", {"acc": 0.8}),
                                    "ppl_x": TaskScore("ppl_x", {"ppl": 10.0})})
    assert mean_of_ratios(pruned, dense, [mc, ppl]) == pytest.approx((0.6 / 0.8 + 10 / 20) / 2)


def test_load_model_folder_roundtrips_a_saved_model(model, tokenizer, tmp_path):
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    loaded, loaded_tokenizer = load_model_folder(tmp_path / "m")
    assert not loaded.training
    assert loaded_tokenizer.encode("The cat") == tokenizer.encode("The cat")
    assert perplexity(loaded, loaded_tokenizer, TEXTS) == perplexity(model, tokenizer, TEXTS)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_scores_equal_cpu_scores(model, tokenizer):
    tasks = [make_task("mc", MC, MC, "test"),
             make_task("ppl", [TextExample(t) for t in TEXTS], [TextExample("x y")], "test")]
    cpu = evaluate_model(model, tokenizer, tasks, batch_size=4)
    gpu = evaluate_model(model.to("cuda"), tokenizer, tasks, batch_size=4)
    model.to("cpu")
    assert gpu.tasks["mc"] == cpu.tasks["mc"]
    assert gpu.tasks["ppl"].metrics["nll"] == pytest.approx(cpu.tasks["ppl"].metrics["nll"], abs=1e-4)


def write_lm_eval_task(folder, rows):
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / "unit_mc.yaml").write_text(
        "task: unit_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n")


def test_lm_eval_bridge_accuracy_equals_own_scorer(model, tokenizer, tmp_path):
    pytest.importorskip("lm_eval", reason="optional dependency: pip install lm-eval")
    from gptailor_merge.scoring.lm_eval_bridge import evaluate_lm_eval

    examples = MC * 2 + [ChoiceExample(f"Question {i}: the cat sat on the",
                                       ("mat", "dog", "sky blue", "park"), i % 4) for i in range(6)]
    write_lm_eval_task(tmp_path, [{"context": ex.context, "choices": list(ex.choices),
                                   "answer": ex.answer} for ex in examples])
    theirs = evaluate_lm_eval(model, tokenizer, ["unit_mc"], include_path=tmp_path,
                              include_defaults=False, batch_size=4, max_length=128)
    ours = multiple_choice(model, tokenizer, examples, batch_size=4, max_length=128)
    assert theirs["unit_mc"]["acc"] == pytest.approx(ours["acc"])
    assert theirs["unit_mc"]["acc_norm"] == pytest.approx(ours["acc_norm"])


def test_lm_eval_loglikelihoods_equal_ours(model, tokenizer):
    pytest.importorskip("lm_eval", reason="optional dependency: pip install lm-eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    requests = [(ex.context, " " + choice) for ex in MC for choice in ex.choices]
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=3, max_length=128)
    instances = [Instance("loglikelihood", {}, request, i) for i, request in enumerate(requests)]
    theirs = [logprob for logprob, _ in lm.loglikelihood(instances, disable_tqdm=True)]
    assert loglikelihoods(model, tokenizer, requests, batch_size=3) == pytest.approx(theirs, abs=1e-5)


def test_lm_eval_task_spec_builds_the_same_examples_lm_eval_scores(model, tokenizer, tmp_path):
    pytest.importorskip("lm_eval", reason="optional dependency: pip install lm-eval")
    from gptailor_merge.scoring import load_task
    from gptailor_merge.scoring.lm_eval_bridge import evaluate_lm_eval

    examples = [ChoiceExample(f"Question {i}: the cat sat on the", ("mat", "dog", "sky blue", "park"), i % 4)
                for i in range(12)]
    write_lm_eval_task(tmp_path, [{"context": ex.context, "choices": list(ex.choices), "answer": ex.answer}
                                  for ex in examples])
    task = load_task(f"lm_eval:unit_mc@{tmp_path}")
    assert task.kind == "multiple_choice" and len(task.search + task.validation + task.heldout) == 12
    every = (*task.search, *task.validation, *task.heldout)
    assert {ex.context for ex in every} == {ex.context for ex in examples}
    ours = multiple_choice(model, tokenizer, list(task.search + task.validation + task.heldout),
                           batch_size=4, max_length=128)
    theirs = evaluate_lm_eval(model, tokenizer, ["unit_mc"], include_path=tmp_path,
                              include_defaults=False, batch_size=4, max_length=128)
    assert theirs["unit_mc"]["acc"] == pytest.approx(ours["acc"])


def test_a_choice_with_its_own_leading_whitespace_gets_no_extra_delimiter():
    from gptailor_merge.scoring.multiple_choice import continuation

    assert continuation("42") == " 42"
    assert continuation(" 42") == " 42"
    assert continuation("\n    return x") == "\n    return x"


FOUR = [ChoiceExample("c", ("a", "b", "c", "d"), 0)] * 4  # chance 0.25


def _gate_tasks():
    return [make_task("near", FOUR, FOUR, "test"), make_task("clear", FOUR, FOUR, "test"),
            make_task("ppl", [TextExample("x y")], [TextExample("x y")], "test")]


def _gate_score(near: float, clear: float, nll: float = 1.0) -> Score:
    return Score("search", 100, {"near": TaskScore("near", {"acc": near, "acc_norm": near, "n": 100}),
                                 "clear": TaskScore("clear", {"acc": clear, "acc_norm": clear, "n": 100}),
                                 "ppl": TaskScore("ppl", {"nll": nll, "ppl": math.exp(nll), "n": 1})})


def test_chance_level_tasks_use_binomial_standard_errors():
    # one standard error at chance 0.25 on 100 examples: sqrt(0.25 * 0.75 / 100) = 0.0433
    score, tasks = _gate_score(near=0.33, clear=0.34), _gate_tasks()
    assert chance_level_tasks(score, tasks, z=2.0) == ["near"]  # +0.08 <= 0.0866 < +0.09
    assert chance_level_tasks(score, tasks, z=0.0) == []
    assert chance_level_tasks(score, tasks, z=3.0) == ["near", "clear"]
    assert chance_level_tasks(_gate_score(near=0.2, clear=0.5), tasks, z=0.0) == ["near"]


def _tiny_model(arch: str, tokenizer, attn: str = "sdpa"):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(3)
    config = AutoConfig.for_model(arch, vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  head_dim=8, max_position_embeddings=256, bos_token_id=1,
                                  eos_token_id=2, pad_token_id=0)
    config._attn_implementation = attn
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("arch,attn", [("llama", "sdpa"), ("llama", "eager"), ("mistral", "sdpa"),
                                       ("qwen2", "sdpa"), ("qwen3", "sdpa")])
@pytest.mark.parametrize("max_length", [128, 7])
def test_shared_context_choices_equal_one_sequence_per_choice(arch, attn, max_length, tokenizer):
    """The packed row (context once, every choice behind it) gives lm-eval's per-choice
    log-likelihoods; max_length 7 truncates contexts differently per choice (rows of their own)."""
    from gptailor_merge.scoring.multiple_choice import choices_loglikelihoods

    model = _tiny_model(arch, tokenizer, attn)
    examples = MC * 3
    kwargs = {"batch_size": 3, "max_length": max_length, "boundaries": (4, 9)}
    reference = choices_loglikelihoods(model, tokenizer, examples, shared_context=False, **kwargs)
    shared = choices_loglikelihoods(model, tokenizer, examples, shared_context=True, **kwargs)
    assert shared == pytest.approx(reference, abs=1e-4)
    a, _ = multiple_choice_details(model, tokenizer, examples, shared_context=False, **kwargs)
    b, _ = multiple_choice_details(model, tokenizer, examples, **kwargs)  # default: shared
    assert (a["acc"], a["acc_norm"]) == (b["acc"], b["acc_norm"])


def test_shared_context_packs_choices_behind_one_context_and_splits_truncated_ones():
    from gptailor_merge.scoring.shared_context import pack_example

    (row,) = pack_example(0, [1, 5, 6], [[7, 8], [9]], max_length=16)
    assert row.tokens == (1, 5, 6, 7) and row.positions == (0, 1, 2, 3) and row.segments == (0, 0, 0, 1)
    assert row.scored == ((0, (2, 3), (7, 8)), (1, (2,), (9,)))
    # max_length 3: choice 0 keeps context [5, 6] ((1,5,6,7,8)[-4:][:-1]), choice 1 keeps [1, 5, 6]
    short, long = pack_example(0, [1, 5, 6], [[7, 8], [9]], max_length=3)
    assert short.tokens == (5, 6, 7) and short.scored == ((0, (1, 2), (7, 8)),)
    assert long.tokens == (1, 5, 6) and long.scored == ((1, (2,), (9,)),)


def test_token_batches_stay_within_their_token_bound_and_restart_at_boundaries():
    from gptailor_merge.scoring.shared_context import padding_fraction, token_batches

    lengths = [5, 9, 3, 9, 2, 7, 4, 8]
    batches = list(token_batches(lengths, max_tokens=18, max_rows=3, boundaries=[3]))
    assert sorted(i for b in batches for i in b) == list(range(8))
    assert all(len(b) * max(lengths[i] for i in b) <= 18 and len(b) <= 3 for b in batches)
    assert all(max(b) < 3 or min(b) >= 3 for b in batches)  # no batch crosses the boundary
    assert batches[:2] == [[1, 0], [2]]
    assert 0.0 <= padding_fraction(lengths, batches) < 0.3
    with pytest.raises(ConfigError):
        next(token_batches(lengths, 0, 3))


def test_shared_context_demanded_of_a_model_that_cannot_take_it_is_a_clear_error(tokenizer):
    from gptailor_merge.scoring.multiple_choice import choices_loglikelihoods

    model = FixedLogits(len(tokenizer))
    with pytest.raises(ConfigError, match="shared-context"):
        choices_loglikelihoods(model, tokenizer, MC, shared_context=True)
    assert len(choices_loglikelihoods(model, tokenizer, MC)) == sum(len(ex.choices) for ex in MC)
