"""The stitcher's task-arithmetic fast path is mergekit's task arithmetic, bit for bit."""

import pytest
import torch
from mergekit.merge_methods.api import merge_tensors

from gptailor_merge.core.errors import GenomeError
from gptailor_merge.core.fast_merge import TaskArithmeticWorkspace
from gptailor_merge.core.genome import LayerSpec
from gptailor_merge.materialize.stitch import Stitcher

_INT_VIEW = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(_INT_VIEW[t.dtype])  # compares signed zeros and NaN payloads too


def _mergekit(base, others, weights, lam, dtype):
    return merge_tensors([base, *others], "task_arithmetic", parameters={"weight": list(weights), "lambda": lam},
                         base_index=0, dtype=dtype, out_dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(), (7,), (33, 17), (5, 3, 4)])
def test_workspace_is_bitwise_mergekit_task_arithmetic(dtype, shape):
    gen = torch.Generator().manual_seed(len(shape))
    workspace = TaskArithmeticWorkspace()  # one workspace across shapes and k: buffers are reused
    for k in (1, 2, 3, 4):
        for lam in (1.0, 0.7, 1 / 3, 1.9):
            base = torch.randn(shape, generator=gen).to(dtype)
            others = [(base.float() + 0.05 * torch.randn(shape, generator=gen)).to(dtype) for _ in range(k)]
            weights = [0.0] + [float(w) for w in torch.rand(k - 1, generator=gen)]  # unused sources weigh 0
            got = workspace.merge(base, others, weights, lam)
            want = _mergekit(base, others, weights, lam, dtype)
            assert got.dtype == want.dtype and got.shape == want.shape
            assert torch.equal(_bits(got), _bits(want)), (dtype, shape, k, lam)


def test_workspace_result_is_not_overwritten_by_the_next_merge():
    workspace = TaskArithmeticWorkspace()
    base, other = torch.zeros(4), torch.ones(4)
    first = workspace.merge(base, [other], [1.0], 0.5)
    workspace.merge(base, [other * 3], [1.0], 0.5)
    assert torch.equal(first, torch.full((4,), 0.5))


def test_workspace_refuses_mismatched_weights():
    with pytest.raises(ValueError, match="2 weights for 1 tensors"):
        TaskArithmeticWorkspace().merge(torch.zeros(2), [torch.ones(2)], [1.0, 1.0], 1.0)


@pytest.mark.parametrize("spec", [LayerSpec(1, (0, 1, 2), lam=0.7), LayerSpec(2, (0, 2), lam=1.0),
                                  LayerSpec(0, (1, 2), lam=0.35, weights=(0.4, 1.3))])
def test_stitched_task_arithmetic_layer_is_bitwise_mergekits(llama_family, spec):
    stitcher = Stitcher(llama_family)
    module = stitcher.layer_module(spec, "task_arithmetic")
    weights = dict(zip(spec.sources, spec.weights))
    state = module.state_dict()
    for name in llama_family.layer_tensor_names(spec.layer_idx):
        tensors = [m.tensor(name) for m in llama_family.members]
        want = _mergekit(tensors[0], tensors[1:], [weights.get(j, 0.0) for j in range(3)], spec.lam, torch.float32)
        assert torch.equal(_bits(state[name.split(f".{spec.layer_idx}.", 1)[1]]), _bits(want)), name


def test_a_selected_layer_shares_nothing_with_the_base_layer(llama_family):
    stitcher = Stitcher(llama_family)
    selected = stitcher.layer_module(LayerSpec(1, (0,)), None)
    base = stitcher.layer_module(LayerSpec(1), None)
    assert selected is not base
    pairs = zip(selected.parameters(), base.parameters(), strict=True)
    assert all(a.data_ptr() != b.data_ptr() for a, b in pairs)


def test_family_tensors_that_do_not_fit_the_base_layer_are_a_clear_error(llama_family):
    stitcher = Stitcher(llama_family)
    with pytest.raises(GenomeError, match="does not match the base layer"):
        stitcher._layer_with(0, {"mlp.up_proj.weight": torch.zeros(3, 3)})
