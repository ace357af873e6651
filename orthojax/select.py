"""Choosing a parameter subtree: by "/"-separated path or by predicate.

Every leaf of a parameter pytree has a path: the "/"-joined names of the keys leading to it, e.g.
``"encoder/conv2/kernel"`` for ``params["encoder"]["conv2"]["kernel"]`` (an ``nnx.State`` adds a final
``"value"``). A selector ``wrt`` is one of

* ``None``: every leaf;
* a path string: every leaf under that path (whole components: ``"encoder/conv1"`` does not select
  ``"encoder/conv10"``);
* a predicate ``fn(path: str, leaf) -> bool``.

:class:`Selection` flattens the pytree once and can put replacement leaves back (``merge``), which is what
:func:`orthojax.task_gradients` differentiates through.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, NamedTuple, Sequence, Union

import jax

PyTree = Any
Selector = Union[None, str, Callable[[str, Any], bool]]

__all__ = ["Selector", "Selection", "closest_paths", "leaf_paths", "make_selection", "path_similarity", "select_subtree"]


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _path_components(keypath: Sequence[Any]) -> tuple[str, ...]:
    return tuple(_key_name(k) for k in keypath)


def leaf_paths(params: PyTree) -> list[str]:
    """The "/"-joined path of every leaf of ``params``, in flattening order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    return ["/".join(_path_components(kp)) for kp, _ in flat]


class Selection(NamedTuple):
    """A flattened pytree with a chosen subset of its leaves.

    Attributes:
      leaves: every leaf of the pytree, in flattening order.
      treedef: the pytree structure.
      indices: positions (into ``leaves``) of the selected leaves.
      keys: for each selected leaf, its path components relative to the selector (used to build the
        nested dict that mirrors the selected subtree).
    """

    leaves: list
    treedef: Any
    indices: tuple[int, ...]
    keys: tuple[tuple[str, ...], ...]

    @property
    def selected(self) -> list:
        """The selected leaves, in order."""
        return [self.leaves[i] for i in self.indices]

    def merge(self, selected_leaves: Sequence[Any]) -> PyTree:
        """The full pytree with the selected leaves replaced by ``selected_leaves``."""
        leaves = list(self.leaves)
        for i, leaf in zip(self.indices, selected_leaves):
            leaves[i] = leaf
        return self.treedef.unflatten(leaves)

    def as_tree(self, selected_leaves: Sequence[Any]) -> dict:
        """``selected_leaves`` arranged as a nested dict keyed by :attr:`keys`."""
        tree: dict = {}
        for key, leaf in zip(self.keys, selected_leaves):
            node = tree
            for part in key[:-1]:
                node = node.setdefault(part, {})
            node[key[-1] if key else ""] = leaf
        return tree


def _component_similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def _ordered_match(typed: Sequence[str], candidate: Sequence[str]) -> float:
    """Mean similarity of ``typed``'s components matched, in order, to a subsequence of ``candidate``'s."""
    if not typed:
        return 1.0
    best = [[0.0] * (len(candidate) + 1) for _ in range(len(typed) + 1)]
    for i in range(1, len(typed) + 1):
        for j in range(1, len(candidate) + 1):
            best[i][j] = max(best[i][j - 1], best[i - 1][j],
                             best[i - 1][j - 1] + _component_similarity(typed[i - 1], candidate[j - 1]))
    return best[-1][-1] / len(typed)


def path_similarity(typed: Sequence[str], candidate: Sequence[str]) -> float:
    """How close an existing path is to the path the user typed, in [0, 1] (1: equal up to case).

    Case-insensitive and component-wise: the last typed name (the layer) against the candidate's last name
    weighs most, the typed parents are matched in order to any of the candidate's parents (so ``"Conv_1"`` and
    ``"params/Conv_1"`` match ``"params/backbone/block_1/Conv_1"``, ``"encodr/conv2"`` matches
    ``"encoder/conv2"``), and each component of the candidate beyond the typed ones costs a little. The
    similarity of the whole strings is the floor.
    """
    t = [part.lower() for part in typed]
    c = [part.lower() for part in candidate]
    whole = _component_similarity("/".join(t), "/".join(c))
    if not t or not c:
        return whole
    last = _component_similarity(t[-1], c[-1])
    score = last if len(t) == 1 else 0.6 * last + 0.4 * _ordered_match(t[:-1], c[:-1])
    return max(whole, score - 0.02 * max(len(c) - len(t), 0))


def closest_paths(wrt: str, all_paths: Sequence[Sequence[str]], n: int = 5) -> list[str]:
    """The ``n`` existing paths most similar to ``wrt`` (:func:`path_similarity`), best first.

    Candidates are the leaves and every subtree above them; a path under one already listed is left out (the
    suggestions name distinct layers, not the kernel and bias of the first).
    """
    typed = tuple(part for part in wrt.strip("/").split("/") if part)
    prefixes = {tuple(p[:i]) for p in all_paths for i in range(1, len(p) + 1)}
    ranked = sorted(prefixes, key=lambda p: (-path_similarity(typed, p), len(p), "/".join(p)))
    chosen: list[tuple[str, ...]] = []
    for p in ranked:
        if len(chosen) == n:
            break
        if not any(p[:len(q)] == q for q in chosen):
            chosen.append(p)
    return ["/".join(p) for p in chosen]


def _missing_path_error(wrt: str, all_paths: list[tuple[str, ...]]) -> KeyError:
    close = closest_paths(wrt, all_paths)
    typed = "/".join(part for part in wrt.strip("/").split("/") if part).lower()
    message = f"wrt path {wrt!r} matches no parameter"
    if close and close[0].lower() == typed:
        message += f" (paths are case-sensitive): did you mean {close[0]!r}?"
    elif close:
        message += f"; did you mean {close[0]!r}?"
    return KeyError(f"{message} Closest existing paths, best first: {close}")


def make_selection(params: PyTree, wrt: Selector) -> Selection:
    """Flattens ``params`` and picks the leaves that ``wrt`` selects.

    Args:
      params: any pytree (dict, Flax variables, ``nnx.State``).
      wrt: ``None``, a "/"-separated path, or a predicate ``fn(path, leaf) -> bool``.

    Returns:
      A :class:`Selection`.

    Raises:
      KeyError: a path that selects nothing (the message lists the closest existing paths).
      ValueError: a predicate that selects nothing.
      TypeError: a selector of another type.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    leaves = [leaf for _, leaf in flat]
    comps = [_path_components(kp) for kp, _ in flat]
    if wrt is None:
        chosen = [(i, c) for i, c in enumerate(comps)]
    elif isinstance(wrt, str):
        target = tuple(part for part in wrt.strip("/").split("/") if part)
        if not target:
            raise KeyError(f"wrt path {wrt!r} is empty; use wrt=None to select every parameter")
        n = len(target)
        chosen = [(i, c[n:]) for i, c in enumerate(comps) if c[:n] == target]
        if not chosen:
            raise _missing_path_error(wrt, comps)
        # a path naming a leaf itself: keep its last name so the mirrored dict has a key
        chosen = [(i, rel if rel else target[-1:]) for i, rel in chosen]
    elif callable(wrt):
        chosen = [(i, c) for i, c in enumerate(comps) if wrt("/".join(c), leaves[i])]
        if not chosen:
            raise ValueError(f"the wrt predicate {wrt!r} selects no parameter of {len(leaves)} leaves")
    else:
        raise TypeError(f"wrt must be None, a '/'-separated path or a predicate; got {type(wrt).__name__}")
    indices = tuple(i for i, _ in chosen)
    keys = tuple(rel for _, rel in chosen)
    return Selection(leaves=leaves, treedef=treedef, indices=indices, keys=keys)


def select_subtree(params: PyTree, wrt: Selector) -> dict:
    """The leaves that ``wrt`` selects, as a nested dict mirroring the selected subtree.

    ``select_subtree({"enc": {"conv2": {"kernel": k}}}, "enc/conv2") == {"kernel": k}``; a predicate keeps
    full paths.
    """
    selection = make_selection(params, wrt)
    return selection.as_tree(selection.selected)
