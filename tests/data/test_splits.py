"""Split expressions: ``A&B`` and ``A-B`` over a store's named splits (the study's inner search split)."""
import pytest

from pscv_dist.data import SliceStore


def test_intersection_and_difference_keep_the_first_splits_order(phantom_store):
    s = SliceStore(phantom_store)
    named = s.splits
    inner = s.split("fold0/train&fold1/train")
    assert inner == [c for c in named["fold0/train"] if c in named["fold1/train"]]
    assert set(inner).isdisjoint(named["fold0/val"]) and set(inner).isdisjoint(named["fold1/val"])
    assert s.split("all-fold0/val") == [c for c in named["all"] if c not in named["fold0/val"]]
    assert s.split("all-fold0/val-fold1/val") == inner  # left to right
    # fold1's validation patients are training patients of fold 0: an inner split that never sees fold 0's
    assert set(s.split("fold1/val")) <= set(named["fold0/train"])


@pytest.mark.parametrize("expr, bad", [("fold0/train&nope", "nope"), ("nope-fold0/val", "nope"), ("fold9/val", "fold9/val")])
def test_an_unknown_split_in_an_expression_is_named(phantom_store, expr, bad):
    with pytest.raises(KeyError, match=f"split '{bad}'"):
        SliceStore(phantom_store).split(expr)
