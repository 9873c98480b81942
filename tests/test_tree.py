import pytest
import torch

from mambaspec import MambaspecError, TreeShape
from mambaspec.core.tree import DraftTree


@pytest.mark.parametrize("text,levels,nodes", [
    ("1,1,1,1", (1, 1, 1, 1), 4), ("3,2,2,1,1", (3, 2, 2, 1, 1), 45), ("(2, 2, 1)", (2, 2, 1), 10),
    ("1", (1,), 1), ("", (), 0), ("()", (), 0),
])
def test_parse(text, levels, nodes):
    shape = TreeShape.parse(text)
    assert shape.branching == levels and shape.num_nodes == nodes


@pytest.mark.parametrize("bad", ["0", "0,2", "a,b", "1,,2", "-1", "2,0", "1.5"])
def test_bad_shapes(bad):
    with pytest.raises(MambaspecError, match="invalid tree shape"):
        TreeShape.parse(bad)


def test_too_big():
    with pytest.raises(MambaspecError, match="nodes"):
        TreeShape.parse("8,8,8,8")


def test_ancestor_mask_and_paths():
    # root -> 1, 2 ; 1 -> 3 ; 2 -> 4 ; 3 -> 5
    tree = DraftTree.root_only(9)
    for tok, parent, prob in [(10, 0, 0.5), (11, 0, 0.3), (12, 1, 0.8), (13, 2, 0.9), (14, 3, 0.5)]:
        tree.add(tok, parent, prob=prob)
    assert tree.depths == [0, 1, 1, 2, 2, 3] and tree.depth == 3
    m = tree.ancestor_mask()
    assert m[5].tolist() == [True, True, False, True, False, True]
    assert m[4].tolist() == [True, False, True, False, True, False]
    assert torch.equal(m.diagonal(), torch.ones(6, dtype=torch.bool))
    assert tree.path_to(5) == [1, 3, 5] and tree.path_to(0) == []
    assert tree.children(0) == [1, 2] and tree.children(4) == []
