import pytest

from gptailor_merge.core.errors import GenomeError
from gptailor_merge.core.genome import Genome, LayerSpec, resolve_target


def test_base_only_genome_keeps_all_but_removed():
    g = Genome.base_only(8, 3, removed=[2, 5])
    assert g.kept == (0, 1, 3, 4, 6, 7)
    assert g.removed == (2, 5)
    assert not g.has_merges


def test_selection_parameters_are_canonical_so_equal_layers_compare_equal():
    assert LayerSpec(3, (1,), lam=0.3, density=0.2) == LayerSpec(3, (1,))
    assert LayerSpec(3, (2, 0), lam=0.5) == LayerSpec(3, (0, 2), lam=0.5)


def test_genome_dict_roundtrip_is_exact():
    g = Genome(6, 3, (LayerSpec(0, (1,)), LayerSpec(2, (0, 2), lam=0.7, density=0.4),
                      LayerSpec(3, ()), LayerSpec(5, (0, 1), weights=(0.2, 0.9))), method="ties")
    assert Genome.from_dict(g.to_dict()) == g
    assert Genome.from_dict(g.to_dict()).genome_id == g.genome_id


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(layers=(LayerSpec(4),)), "out of range"),
        (dict(layers=(LayerSpec(2), LayerSpec(1))), "strictly increasing"),
        (dict(layers=(LayerSpec(1), LayerSpec(1))), "strictly increasing"),
        (dict(layers=(LayerSpec(0, (3,)),)), "candidate 3 out of range"),
        (dict(layers=(LayerSpec(0, (0, 1), lam=2.5),)), "lambda"),
        (dict(layers=(LayerSpec(0, (0, 1), density=0.0),), method="ties"), "density"),
        (dict(layers=()), "at least one"),
        (dict(layers=(LayerSpec(0),), method="slerp"), "unknown merge method"),
    ],
)
def test_genome_invariants_raise_clear_errors(kwargs, message):
    with pytest.raises(GenomeError, match=message):
        Genome(4, 2, **kwargs)


def test_removed_must_be_unique_and_in_range_and_leave_a_layer():
    with pytest.raises(GenomeError, match="duplicate"):
        Genome.base_only(4, 0, removed=[1, 1])
    with pytest.raises(GenomeError, match="out of range"):
        Genome.base_only(4, 0, removed=[4])
    with pytest.raises(GenomeError, match="leaves none"):
        Genome.base_only(2, 0, removed=[0, 1])


def test_resolve_target_from_count_or_fraction():
    assert resolve_target(40, remove_fraction=0.25) == 30
    assert resolve_target(12, layers=9) == 9
    with pytest.raises(GenomeError, match="impossible"):
        resolve_target(12, layers=0)
    with pytest.raises(GenomeError, match=r"choose 1..12 kept layers \(e.g. 9 removes 25%"):
        resolve_target(12, layers=13)
    assert resolve_target(12, layers=12) == 12  # no removal: a per-layer selection/merge search
    with pytest.raises(GenomeError, match="remove_fraction"):
        resolve_target(12, remove_fraction=1.0)
    with pytest.raises(GenomeError, match="exactly one"):
        resolve_target(12)
