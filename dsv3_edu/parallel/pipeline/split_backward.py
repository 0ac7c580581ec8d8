"""Split one stage's backward into B (input gradient now) and W (weight gradients later).

This is ZeroBubble's idea, done on the autograd graph of any module (same approach as PyTorch's
``torch.distributed.pipelining``, written small):

- B: ``torch.autograd.grad(y, [x])`` computes only the gradient w.r.t. the stage input x, which the
  previous stage is waiting for. Autograd skips every weight-gradient matmul on the way.
- Before B runs we find the *boundary* nodes: nodes on the path from y to x that have a child
  leading to weights but not to x (for ``nn.Linear`` the addmm node: its children are x's path,
  the bias and the transposed weight). A pre-hook records the gradient arriving at each of them.
- W: starting from those recorded gradients, ``torch.autograd.grad`` to the weights computes only
  the weight branches; the gradients are added to ``p.grad`` as ``backward()`` would.

Boundary nodes that share a weight (a weight used twice) are processed together, and each one's
incoming gradient is pinned to the recorded value so that nothing is counted twice.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.autograd.graph import GradientEdge, Node, get_gradient_edge


def _children(node: Node) -> list[Node]:
    return [c for c, _ in node.next_functions if c is not None]


def _reaches(root: Node, targets: set[Node]) -> dict[Node, bool]:
    """For every node below ``root``: can it reach one of ``targets``? (iterative post-order DFS)"""
    memo: dict[Node, bool] = {}
    stack = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if node in memo:
            continue
        if expanded:
            memo[node] = node in targets or any(memo[c] for c in _children(node))
            continue
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if c not in memo)
    return memo


def _weights_below(kids: list[Node], to_w: dict[Node, bool], acc: set[Node]) -> set[Node]:
    """The weight accumulators reachable from ``kids``."""
    found, seen, stack = set(), set(), list(kids)
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node in acc:
            found.add(node)
        stack.extend(c for c in _children(node) if to_w.get(c, False))
    return found


@dataclass
class WeightGradWork:
    """What W needs: groups of (boundary nodes, their recorded gradients, the weights below them)."""
    groups: list[dict] = field(default_factory=list)
    root: tuple | None = None           # (y, grad_y) when y does not depend on x: W does everything


def backward_input(y: torch.Tensor, grad_y: torch.Tensor | None, x: torch.Tensor,
                   params: list[torch.Tensor]) -> tuple[torch.Tensor | None, WeightGradWork]:
    """B: return (dL/dx or None, the work W needs). No ``p.grad`` is touched.

    ``y`` is the stage output (or the loss on the last stage, then ``grad_y`` is None), ``x`` the
    stage input (a leaf; if it does not require grad - the first stage - B has nothing to do).
    """
    params = [p for p in params if p.requires_grad]
    acc = {get_gradient_edge(p).node: p for p in params}
    if y.grad_fn is None:
        raise ValueError("stage output has no autograd graph: did the forward run under no_grad?")
    x_nodes = {get_gradient_edge(x).node} if x.requires_grad else set()
    to_x = _reaches(y.grad_fn, x_nodes)
    if not to_x[y.grad_fn]:
        return None, WeightGradWork(root=(y, grad_y))
    to_w = _reaches(y.grad_fn, set(acc))

    groups: list[dict] = []
    for node, on_x_path in to_x.items():
        kids = [c for c in _children(node) if to_w[c] and not to_x[c]] if on_x_path else []
        if not kids:
            continue
        group = {"nodes": [node], "accs": _weights_below(kids, to_w, set(acc))}
        for other in [g for g in groups if g["accs"] & group["accs"]]:   # merge groups sharing a weight
            groups.remove(other)
            group["nodes"] += other["nodes"]
            group["accs"] |= other["accs"]
        groups.append(group)

    recorded: dict[Node, tuple] = {}
    handles = [n.register_prehook(lambda go, n=n: recorded.__setitem__(n, go)) for g in groups for n in g["nodes"]]
    try:
        (dx,) = torch.autograd.grad(y, [x], grad_y, retain_graph=True)
    finally:
        for h in handles:
            h.remove()
    work = WeightGradWork(groups=[{"nodes": g["nodes"], "grads": [recorded.get(n) for n in g["nodes"]],
                                   "params": [acc[a] for a in g["accs"]]} for g in groups])
    return dx, work


def _accumulate(params, grads) -> None:
    for p, g in zip(params, grads):
        if g is None:
            continue
        if p.grad is None:
            p.grad = g.detach().clone()
        else:
            p.grad += g


def backward_weight(work: WeightGradWork, params: list[torch.Tensor]) -> None:
    """W: add the weight gradients recorded by ``backward_input`` into ``p.grad``."""
    if work.root is not None:
        y, grad_y = work.root
        params = [p for p in params if p.requires_grad]
        _accumulate(params, torch.autograd.grad(y, params, grad_y, allow_unused=True))
        return
    for g in work.groups:
        edges, grads = [], []
        for node, go in zip(g["nodes"], g["grads"]):
            for i, t in enumerate(go or ()):
                if t is not None:
                    edges.append(GradientEdge(node, i))
                    grads.append(t)
        if not edges:
            continue
        # a deeper boundary node of the group also receives gradient through a shallower one: pin it
        pins = [n.register_prehook(lambda _, go=go: go) for n, go in zip(g["nodes"], g["grads"]) if go is not None]
        try:
            dws = torch.autograd.grad(edges, g["params"], grads, allow_unused=True, retain_graph=True)
        finally:
            for h in pins:
                h.remove()
        _accumulate(g["params"], dws)


def backward_full(y: torch.Tensor, grad_y: torch.Tensor | None, x: torch.Tensor,
                  params: list[torch.Tensor]) -> torch.Tensor | None:
    """BW: the ordinary backward, input and weight gradients at once; returns dL/dx (or None)."""
    params = [p for p in params if p.requires_grad]
    inputs = ([x] if x.requires_grad else []) + params
    grads = torch.autograd.grad(y, inputs, grad_y, allow_unused=True)
    dx = grads[0] if x.requires_grad else None
    _accumulate(params, grads[1:] if x.requires_grad else grads)
    return dx
