import pickle
import sys

import numpy as np
import pytest

from d2lite.utils.serialize import PicklableWrapper


def test_picklable_wrapper_pickles_closures_by_value():
    offset = 3
    fn = PicklableWrapper(PicklableWrapper(lambda x: x + offset))
    assert not isinstance(fn._obj, PicklableWrapper)  # wrapping twice is wrapping once
    assert fn(1) == 4
    back = pickle.loads(pickle.dumps(fn))
    assert not isinstance(back, PicklableWrapper) and back(1) == 4  # unpickles to the function
    assert PicklableWrapper(np.zeros(3)).shape == (3,)  # attributes are forwarded
    with pytest.raises((pickle.PicklingError, AttributeError)):
        pickle.dumps(lambda x: x)  # what the wrapper is for


def test_picklable_wrapper_without_cloudpickle_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "cloudpickle", None)  # import cloudpickle -> ImportError
    with pytest.raises(ImportError, match="pip install cloudpickle"):
        pickle.dumps(PicklableWrapper(lambda x: x))
