import torch

from rcdm_lab.state_dicts import compare_state_dicts, preview


def test_compare_lists_each_kind_of_mismatch_and_nothing_when_equal():
    expected = {"a": torch.zeros(2), "b": torch.zeros(3, 4), "c": torch.zeros(1)}
    found = {"a": torch.ones(2), "b": torch.zeros(4, 3), "d": torch.zeros(1)}
    mismatch = compare_state_dicts(found, expected)
    assert mismatch.missing == ["c"] and mismatch.unexpected == ["d"]
    assert mismatch.wrong_shape == ["b: found (4, 3) vs expected (3, 4)"]
    assert mismatch.listings() == ["missing (1): c", "unexpected (1): d",
                                   "wrong shape (1): b: found (4, 3) vs expected (3, 4)"]
    assert not compare_state_dicts(expected, expected)


def test_preview_counts_what_it_leaves_out():
    assert preview(["x", "y", "z"], limit=2) == "x, y, ... (+1 more)"
    assert preview(["x"], limit=2) == "x"
