"""Pickling of lambdas and closures (detectron2's ``detectron2.utils.serialize``).

DataLoader workers started with the ``spawn`` or ``forkserver`` method (the default on
macOS and Windows) receive the dataset pickled; a dataset holding a lambda, a closure
or a function defined in ``__main__`` only pickles if that function is serialized by
value, which ``cloudpickle`` does.
"""

from typing import Any, Callable, Tuple

__all__ = ["PicklableWrapper"]


def _cloudpickle():
    try:
        import cloudpickle
    except ImportError as e:  # a dependency of d2lite (setup.py); say how to get it
        raise ImportError(
            "Pickling a lambda or closure (e.g. the map_func of a MapDataset sent to DataLoader workers) "
            "needs cloudpickle, a dependency of d2lite: pip install cloudpickle"
        ) from e
    return cloudpickle


class PicklableWrapper:
    """Wrap an object so that pickling it uses cloudpickle (by value for lambdas and closures).

    The wrapper calls and forwards attributes to the wrapped object; unpickling returns the
    wrapped object itself. Wrapping twice is the same as wrapping once. cloudpickle is
    slower than pickle: wrap callables, not bulk data.

    Example::

        fn = PicklableWrapper(lambda x: x + 1)
        pickle.loads(pickle.dumps(fn))(1)  # 2
    """

    def __init__(self, obj: Any):
        while isinstance(obj, PicklableWrapper):
            obj = obj._obj
        self._obj = obj

    def __reduce__(self) -> Tuple[Callable, Tuple[bytes]]:
        cloudpickle = _cloudpickle()
        return cloudpickle.loads, (cloudpickle.dumps(self._obj),)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._obj(*args, **kwargs)

    def __getattr__(self, attr: str) -> Any:
        # only called for attributes not found on the wrapper itself
        if attr == "_obj":  # not set yet (e.g. during copy): avoid infinite recursion
            raise AttributeError(attr)
        return getattr(self._obj, attr)

    def __repr__(self) -> str:
        return f"PicklableWrapper({self._obj!r})"
