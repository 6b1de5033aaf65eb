import pytest
import torch

from d2lite.structures import ImageList


def test_pad_to_size_divisibility_with_pad_value():
    a = torch.rand(3, 10, 20)
    b = torch.rand(3, 33, 5)
    il = ImageList.from_tensors([a, b], size_divisibility=32, pad_value=-1.0)
    assert il.tensor.shape == (2, 3, 64, 32)
    assert il.image_sizes == [(10, 20), (33, 5)]
    assert len(il) == 2
    # images sit top-left, padding right/bottom
    assert torch.equal(il.tensor[0, :, :10, :20], a)
    assert torch.equal(il.tensor[1, :, :33, :5], b)
    assert (il.tensor[0, :, 10:, :] == -1).all() and (il.tensor[0, :, :, 20:] == -1).all()
    assert (il.tensor[1, :, 33:, :] == -1).all() and (il.tensor[1, :, :, 5:] == -1).all()
    assert torch.equal(il[0], a) and torch.equal(il[1], b)
    assert il.device == torch.device("cpu")
    assert il.to(torch.float64).tensor.dtype == torch.float64


def test_no_divisibility_pads_to_max():
    il = ImageList.from_tensors([torch.ones(1, 4, 6), torch.ones(1, 7, 2)])
    assert il.tensor.shape == (2, 1, 7, 6)
    assert il.tensor.sum() == 4 * 6 + 7 * 2  # pad value 0 by default


def test_single_image_and_exact_multiple():
    x = torch.rand(3, 64, 32)
    il = ImageList.from_tensors([x], size_divisibility=32)
    assert il.tensor.shape == (1, 3, 64, 32)
    assert torch.equal(il.tensor[0], x)
    il = ImageList.from_tensors([torch.zeros(3, 65, 1)], size_divisibility=32, pad_value=7)
    assert il.tensor.shape == (1, 3, 96, 32)
    assert il.tensor[0, 0, 95, 31] == 7 and il.tensor[0, 0, 0, 0] == 0


def test_padding_constraints():
    x = torch.rand(3, 10, 20)
    il = ImageList.from_tensors([x], size_divisibility=32, padding_constraints={"square_size": 40})
    # square_size first, then size_divisibility
    assert il.tensor.shape == (1, 3, 64, 64)
    il = ImageList.from_tensors([x], size_divisibility=32, padding_constraints={"size_divisibility": 8})
    assert il.tensor.shape == (1, 3, 16, 24)
    with pytest.raises(ValueError, match="square_size"):
        ImageList.from_tensors([x], padding_constraints={"square_size": 12})


def test_bad_input():
    with pytest.raises(ValueError):
        ImageList.from_tensors([])
    with pytest.raises(ValueError, match="image 1"):
        ImageList.from_tensors([torch.zeros(3, 4, 4), torch.zeros(1, 4, 4)])
    with pytest.raises(TypeError):
        ImageList.from_tensors([torch.zeros(3, 4, 4), [1, 2]])
