"""Hub push: the exact upload folder, a card with valid metadata, early errors, dry run, no token leaks.

Nothing touches the network: a recording stand-in replaces `HfApi`, and HF_HUB_OFFLINE=1 (conftest).
`ModelCard.validate()` posts the card to the Hub, so the tests parse the front matter and check
`card.data` fields instead.
"""

import inspect
import json
import logging

import pytest
import yaml

import gptailor_merge.share.hub as hub
from gptailor_merge.core.errors import ConfigError, HubError
from gptailor_merge.core.outputs import MARKER
from gptailor_merge.share.hub import (
    CARD_TAGS,
    FamilyFacts,
    ShareSource,
    base_license,
    build_model_card,
    push_to_hub,
)

TOKEN = "hf_TestSecretToken0123456789"
UPLOADED = {"README.md", "config.json", "generation_config.json", "layer_map.png", "mergekit_config.yml",
            "model.safetensors", "tokenizer.json", "tokenizer_config.json"}


class RecordingApi:
    """Stands in for `HfApi`: each method binds its arguments to the real `HfApi` method's signature
    (a call the library would reject raises TypeError here too), records them by name, and returns
    what the real method returns (`RepoUrl`, None, `CommitInfo`). The upload records what the folder
    held when it was uploaded."""

    def __init__(self):
        self.calls = []
        self.files = {}

    def _record(self, name, *args, **kwargs) -> dict:
        from huggingface_hub import HfApi

        arguments = inspect.signature(getattr(HfApi, name)).bind(self, *args, **kwargs).arguments
        arguments.pop("self")
        self.calls.append((name, arguments["repo_id"], arguments))
        return arguments

    def create_repo(self, *args, **kwargs):
        from huggingface_hub import RepoUrl

        return RepoUrl(f"https://huggingface.co/{self._record('create_repo', *args, **kwargs)['repo_id']}")

    def create_branch(self, *args, **kwargs):
        self._record("create_branch", *args, **kwargs)

    def upload_folder(self, *args, **kwargs):
        from pathlib import Path

        from huggingface_hub import CommitInfo

        arguments = self._record("upload_folder", *args, **kwargs)
        folder, repo_id = Path(arguments["folder_path"]), arguments["repo_id"]
        self.files = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/abc123",
                          commit_message=arguments.get("commit_message") or "", commit_description="",
                          oid="abc123")


def test_the_hub_stand_in_rejects_what_the_real_hfapi_signatures_reject(tmp_path):
    api = RecordingApi()
    with pytest.raises(TypeError):
        api.upload_folder("someone/x", str(tmp_path))  # keyword-only in HfApi
    with pytest.raises(TypeError):
        api.upload_folder(repo_id="someone/x", folder=str(tmp_path))  # the parameter is folder_path
    with pytest.raises(TypeError):
        api.create_repo("someone/x", True)  # private is keyword-only
    with pytest.raises(TypeError):
        api.create_branch("someone/x", "pruned")  # branch is keyword-only
    assert api.calls == []


@pytest.fixture
def count_materializations(monkeypatch):
    calls = []
    real = hub.materialize_with_mergekit

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(hub, "materialize_with_mergekit", counting)
    return calls


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---", 2)[1])


def test_push_from_a_run_creates_the_repo_and_uploads_exactly_the_model_card_recipe_and_map(
        tiny_run, count_materializations, caplog, capsys):
    from huggingface_hub import ModelCard

    api = RecordingApi()
    caplog.set_level(logging.DEBUG)
    url = push_to_hub(tiny_run, "someone/tiny-pruned", private=True, revision="pruned", token=TOKEN, api=api)
    assert url == "https://huggingface.co/someone/tiny-pruned/commit/abc123"
    assert [c[0] for c in api.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert api.calls[0][1] == "someone/tiny-pruned"
    assert api.calls[0][2]["private"] is True and api.calls[0][2]["exist_ok"] is True
    assert api.calls[1][2]["branch"] == "pruned" and api.calls[2][2]["revision"] == "pruned"
    assert set(api.files) == UPLOADED
    assert len(count_materializations) == 1
    # the published recipe is best.yaml with the local family folders replaced by the members' names
    expected = (tiny_run / "best.yaml").read_text()
    for name, folder in zip(("base", "cand0", "cand1", "cand2"), ("llama", "chat", "math", "code")):
        expected = expected.replace(str((tiny_run.parent / "fam" / name).resolve()), folder)
    assert yaml.safe_load(api.files["mergekit_config.yml"].decode()) == yaml.safe_load(expected)
    assert str(tiny_run.parent) not in expected
    card = ModelCard(api.files["README.md"].decode())
    assert card.data.library_name == "transformers"
    # the token goes to the API and nowhere else: not in logs, output or any uploaded file
    assert all(c[2]["token"] == TOKEN for c in api.calls)
    out = capsys.readouterr()
    assert TOKEN not in caplog.text + out.out + out.err
    assert not any(TOKEN.encode() in data for data in api.files.values())
    from pathlib import Path

    assert not Path(api.calls[2][2]["folder_path"]).exists()  # the temporary upload folder is gone


def test_dry_run_writes_the_upload_folder_calls_no_api_and_the_card_is_valid_hub_metadata(tiny_run, tmp_path, capsys):
    from huggingface_hub import ModelCard, ModelCardData

    from gptailor_merge.cli.app import main

    out = tmp_path / "dry"
    assert main(["-q", "push", str(tiny_run), "someone/tiny-pruned", "--dry-run", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "nothing uploaded" in printed and "model.safetensors" in printed
    assert {p.name for p in out.iterdir()} == UPLOADED | {MARKER}  # the marker lets --overwrite replace it
    text = (out / "README.md").read_text()
    meta = _front_matter(text)
    ModelCardData(**meta, ignore_metadata_errors=False)  # the front matter is card data the Hub library accepts
    card = ModelCard.load(out / "README.md")
    assert set(CARD_TAGS) <= set(card.data.tags)
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert card.data.base_model is None  # a family of local folders has no Hub ids to list
    assert "license" not in meta  # the synthetic base states none
    summary = json.loads((tiny_run / "summary.json").read_text())
    best = next(r for r in summary["rows"] if r["model"] == "gptailor-best")
    assert "**4 of 6 decoder layers kept**" in text
    assert f"{summary['rows'][0]['params']:,} in the dense base → {best['params']:,} here" in text
    assert "![layer map](layer_map.png)" in text and "| layer | position in the pruned model |" in text
    assert "| **this model** | 4 |" in text and "llama (family member)" in text
    # the best single-model baseline among the run's seeds, and how this model was chosen
    seed = summary["selection"]["best_baseline"]["name"]
    assert f"best-baseline ({seed}) (single-model pruning of the base)" in text
    assert "vs best baseline (95% CI)" in text and summary["selection"]["message"] in text
    assert "mergekit-yaml mergekit_config.yml out/" in text
    assert "python -m gptailor_merge optimize --config config.yaml" in text
    assert (out / "layer_map.png").read_bytes()[:4] == b"\x89PNG"


def test_a_model_folder_is_uploaded_as_is_with_a_card_from_its_recipe(tiny_run, tmp_path, count_materializations):
    model_dir = tiny_run / "best_model"
    readme_before = (model_dir / "README.md").read_text()
    out = push_to_hub(model_dir, "someone/tiny-pruned", dry_run_dir=tmp_path / "dry")
    assert count_materializations == []
    assert {p.name for p in out.iterdir()} == UPLOADED | {MARKER}  # the marker lets --overwrite replace it
    assert (out / "model.safetensors").read_bytes() == (model_dir / "model.safetensors").read_bytes()
    assert "| 1 | " in (out / "README.md").read_text()  # layer map from its mergekit_config.yml
    assert (model_dir / "README.md").read_text() == readme_before  # the source folder is untouched


def test_bad_repo_id_missing_token_and_offline_push_fail_before_any_materialization(
        tiny_run, monkeypatch, count_materializations):
    import huggingface_hub

    api = RecordingApi()
    with pytest.raises(HubError, match="'not a/valid id' is not a valid Hugging Face repo id"):
        push_to_hub(tiny_run, "not a/valid id", token=TOKEN, api=api)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(HubError, match="no Hugging Face token: pass --token, set HF_TOKEN"):
        push_to_hub(tiny_run, "someone/tiny-pruned", api=api)
    with pytest.raises(HubError, match="HF_HUB_OFFLINE is set"):
        push_to_hub(tiny_run, "someone/tiny-pruned", token=TOKEN)  # no stand-in: a real upload
    with pytest.raises(ConfigError, match="neither a run folder"):
        push_to_hub(tiny_run / "nothing.txt", "someone/tiny-pruned", token=TOKEN, api=api)
    assert count_materializations == [] and api.calls == []


def test_card_of_a_hub_family_lists_its_models_as_base_model_with_the_base_license():
    from pathlib import Path

    from gptailor_merge.materialize.recipe import Recipe, recipe_to_genome

    path = Path(__file__).parents[1] / "merge_recipes" / "llama2-13b-gptailor-paper-1.yaml"
    recipe = Recipe.load(path)
    refs = recipe.family_refs()
    facts = FamilyFacts(refs, recipe_to_genome(recipe, refs), list(refs.names), 13_015_864_320, {"license": "llama2"})
    card = build_model_card("someone/llama-2-13b-gptailor", ShareSource("recipe", path, recipe), facts, 9_852_569_600)
    assert card.data.base_model == ["meta-llama/Llama-2-13b-hf", "WizardLMTeam/WizardLM-13B-V1.2",
                                     "vanillaOVO/WizardMath-13B-V1.0", "layoric/llama-2-13b-code-alpaca"]
    assert card.data.base_model_relation == "merge" and card.data.license == "llama2"
    assert "**30 of 40 decoder layers kept**" in card.text
    assert "merge of several fine-tunes" in card.text and "code-alpaca-13b" in card.text
    assert "No evaluation is attached" in card.text  # a bare recipe carries no scores


def test_base_license_comes_from_the_base_card_and_is_omitted_when_unknown(tmp_path):
    (tmp_path / "README.md").write_text("---\nlicense: apache-2.0\ntags: [x]\n---\n# base\n")
    assert base_license(str(tmp_path), tmp_path) == {"license": "apache-2.0"}
    (tmp_path / "README.md").write_text("# no front matter\n")
    assert base_license(str(tmp_path), tmp_path) == {}


def test_a_recipe_is_materialized_and_its_card_reports_the_search_scores_it_carries(tiny_run, tmp_path,
                                                                                   count_materializations):
    out = push_to_hub(tiny_run / "best.yaml", "someone/tiny-pruned", dry_run_dir=tmp_path / "dry")
    assert len(count_materializations) == 1
    assert {p.name for p in out.iterdir()} == UPLOADED | {MARKER}  # the marker lets --overwrite replace it
    text = (out / "README.md").read_text()
    assert "No held-out evaluation is attached. On the search split this recipe's symmetric retention" in text
    assert "fine-tune 2 | code |" in text  # family names ride along in the recipe's metadata
