"""Order the nodes so that the peak of live activation memory is as low as any topological order allows.

Branchy graphs (inception modules, detection necks, multi-branch blocks) can be
run in many orders, and the peak of live activations depends on which branch
runs first: a branch that leaves a big output behind is best run last. The
problem is NP-hard in general, but the published MCU schedulers (SERENITY,
Ahn et al. 2020; the DP of MCUNet's TinyEngine) show that dynamic programming
over the sets of already-run nodes is fast on real networks, because those
sets are few where the graph is narrow. Here it is a best-first search for
the order with the lowest bottleneck (the peak), over at most ``max_states``
sets; beyond that a greedy order is used, and the model's own order is kept
unless the result is strictly better.

Vela does not run ops in the order of the TFLite file (measured with Vela 5.2:
it walks the graph backwards from its outputs, see :func:`nirc.memory.vela_order`).
So the pass also steers Vela with the one exact knob that walk has: the
input order of commutative binary ops (Vela runs the second input's branch
first). Which ops to swap is chosen by local search on the memory model of
Vela's order; when a target is given the swaps are kept only if Vela's
estimated cycles do not rise.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import onnx
import onnx_graphsurgeon as gs

from nirc import memory
from nirc.errors import NircError
from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext
from nirc.target import Target

logger = logging.getLogger(__name__)


class CostLike(Protocol):
    @property
    def cycles(self) -> int: ...

    @property
    def sram_used_bytes(self) -> int: ...

    @property
    def dram_used_bytes(self) -> int: ...


CostFn = Callable[[onnx.ModelProto, Target], CostLike]


def oracle_cost(proto: onnx.ModelProto, target: Target) -> CostLike:
    """Vela's estimate through the shared, cached oracle."""
    from nirc.cost import estimate

    return estimate(proto, target, label="schedule-memory")


@dataclass(frozen=True)
class Schedule:
    """An order and its peak; ``optimal`` when the search finished within its state budget."""

    order: tuple[str, ...]
    peak: int
    optimal: bool
    states: int


class _Problem:
    """Buffers as the memory model groups them, with the nodes that write and read each one."""

    def __init__(self, model: IRModel) -> None:
        self.nodes: list[gs.Node] = list(model.graph.nodes)
        index = {id(n): i for i, n in enumerate(self.nodes)}
        prof = memory.profile(model)
        owner = {t: b for b in prof.buffers for t in b.tensors}
        producer = {t.name: index[id(n)] for n in self.nodes for t in n.outputs}
        graph_outputs = {t.name for t in model.graph.outputs}
        n = len(self.nodes)
        self.preds = [0] * n
        self.size: list[int] = []
        self.writers: list[int] = []  # bitmask of nodes writing the buffer
        self.readers: list[int] = []  # bitmask of nodes that must run before it is freed
        self.pinned: list[bool] = []  # graph inputs/outputs: alive for the whole run
        buffer_index: dict[str, int] = {}
        for buf in prof.buffers:
            buffer_index[buf.name] = len(self.size)
            self.size.append(buf.size)
            self.writers.append(0)
            self.readers.append(0)
            self.pinned.append(any(t in graph_outputs for t in buf.tensors))
        for i, node in enumerate(self.nodes):
            for t in node.inputs:
                if isinstance(t, gs.Constant) or not t.name:
                    continue
                if t.name in producer and producer[t.name] != i:
                    self.preds[i] |= 1 << producer[t.name]
                if t.name in owner:
                    self.readers[buffer_index[owner[t.name].name]] |= 1 << i
            for t in node.outputs:
                if t.name in owner:
                    b = buffer_index[owner[t.name].name]
                    self.writers[b] |= 1 << i
                    self.readers[b] |= 1 << i
        self.base = sum(s for s, w in zip(self.size, self.writers, strict=True) if w == 0)  # graph inputs
        self.starts = [[b for b, w in enumerate(self.writers) if w >> i & 1] for i in range(n)]
        self.touches = [[b for b, r in enumerate(self.readers) if r >> i & 1] for i in range(n)]
        self.full = (1 << n) - 1

    def step(self, done: int, live: int, i: int) -> tuple[int, int]:
        """(bytes alive during node ``i``, bytes alive after it) when ``done`` ran before it."""
        bit = 1 << i
        grown = live + sum(self.size[b] for b in self.starts[i] if not self.writers[b] & done)
        after = done | bit
        freed = sum(
            self.size[b] for b in self.touches[i] if not self.pinned[b] and self.readers[b] & after == self.readers[b]
        )
        return grown, grown - freed

    def peak_of(self, order: Sequence[int], done: int = 0, live: int | None = None) -> int:
        live = self.base if live is None else live
        peak = 0
        for i in order:
            during, live = self.step(done, live, i)
            peak = max(peak, during)
            done |= 1 << i
        return peak

    def ready(self, done: int, allowed: int) -> list[int]:
        return [
            i
            for i in range(len(self.nodes))
            if allowed >> i & 1 and not done >> i & 1 and self.preds[i] & done == self.preds[i]
        ]


def min_peak_order(model: IRModel, *, max_states: int = 200_000) -> Schedule:
    """The topological order with the lowest peak of live bytes (memory model of :mod:`nirc.memory`).

    The graph is first cut at its articulation nodes (nodes every other node
    precedes or follows: each order runs them at the same place, with the same
    tensors alive), and every segment between two of them is scheduled on its
    own, so each segment gets its own lowest peak -- not only the segment that
    holds the global one -- and the search stays small (SERENITY's divide and
    conquer). Within a segment: best-first search on (peak so far, depth); the
    first complete order popped has the lowest possible peak, because the
    peak never decreases along a path. When a segment expands more than
    ``max_states`` node sets, the better of a greedy order (run the ready node
    that leaves the fewest bytes alive) and the model's own order is used
    there, and the result has ``optimal=False``.
    """
    prob = _Problem(model)
    n = len(prob.nodes)
    if n == 0:
        return Schedule((), 0, True, 0)
    order: list[int] = []
    done, live, peak, optimal, states = 0, prob.base, 0, True, 0
    for segment in _segments(prob):
        part, part_peak, exact, expanded = _search(prob, done, live, segment, max_states)
        order += part
        states += expanded
        optimal &= exact
        for i in part:
            _, live = prob.step(done, live, i)
            done |= 1 << i
        peak = max(peak, part_peak)
    return Schedule(tuple(prob.nodes[i].name for i in order), peak, optimal, states)


def _segments(prob: _Problem) -> list[int]:
    """Node sets (bitmasks), in order, between consecutive articulation nodes (each ends with one)."""
    n = len(prob.nodes)
    anc = [0] * n
    for i in range(n):  # the IR order is topological
        for j in range(n):
            if prob.preds[i] >> j & 1:
                anc[i] |= anc[j] | 1 << j
    desc_count = [0] * n
    for i in range(n):
        for j in range(n):
            if anc[j] >> i & 1:
                desc_count[i] += 1
    cuts = [i for i in range(n) if anc[i].bit_count() + desc_count[i] + 1 == n]
    cuts.sort(key=lambda i: anc[i].bit_count())
    segments, taken = [], 0
    for i in cuts:
        mask = (anc[i] | 1 << i) & ~taken
        segments.append(mask)
        taken |= mask
    if taken != prob.full:
        segments.append(prob.full & ~taken)
    return segments


def _search(prob: _Problem, start: int, live0: int, allowed: int, max_states: int) -> tuple[list[int], int, bool, int]:
    """(order, peak, optimal, expanded) running the nodes of ``allowed`` after the set ``start``."""
    goal = start | allowed
    best: dict[int, int] = {start: 0}
    heap: list[tuple[int, int, int, int, int]] = [(0, 0, 0, start, live0)]  # peak, -depth, tie, set, live
    parent: dict[int, tuple[int, int]] = {}
    expanded = counter = 0
    while heap:
        peak, neg_depth, _, done, live = heapq.heappop(heap)
        if done == goal:
            order = []
            state = done
            while state != start:
                prev, node = parent[state]
                order.append(node)
                state = prev
            return order[::-1], peak, True, expanded
        if best.get(done, 1 << 62) < peak:
            continue
        expanded += 1
        if expanded > max_states:
            break
        for i in prob.ready(done, allowed):
            during, after = prob.step(done, live, i)
            new_peak = max(peak, during)
            nxt = done | 1 << i
            if new_peak < best.get(nxt, 1 << 62):
                best[nxt] = new_peak
                parent[nxt] = (done, i)
                counter += 1
                heapq.heappush(heap, (new_peak, neg_depth - 1, counter, nxt, after))
    own = [i for i in range(len(prob.nodes)) if allowed >> i & 1]
    greedy = _greedy(prob, start, live0, allowed)
    scored = [(prob.peak_of(o, start, live0), o) for o in (greedy, own)]
    peak, choice = min(scored, key=lambda s: s[0])
    return choice, peak, False, expanded


def _greedy(prob: _Problem, start: int, live: int, allowed: int) -> list[int]:
    done, order = start, []
    while done != start | allowed:
        options = []
        for i in prob.ready(done, allowed):
            during, after = prob.step(done, live, i)
            options.append((during, after, i))
        during, after, i = min(options)
        order.append(i)
        done |= 1 << i
        live = after
    return order


def commutative_nodes(model: IRModel) -> list[gs.Node]:
    """Binary commutative nodes with two activation inputs: swapping them is exact, and steers Vela."""
    found = []
    for node in model.graph.nodes:
        if node.op not in ("Add", "Mul", "Max", "Min") or len(node.inputs) != 2:
            continue
        a, b = node.inputs
        if isinstance(a, gs.Constant) or isinstance(b, gs.Constant) or a is b:
            continue
        if list(a.shape or []) != list(b.shape or []):
            continue  # broadcasting: Vela's ifm/ifm2 roles are not symmetric
        found.append(node)
    return found


def score(prof: memory.MemoryProfile) -> tuple[int, ...]:
    """What an order is judged by: its live bytes per step, largest first, compared lexicographically.

    So the peak decides first, then the next-highest step, and so on: on a CNN the
    global peak usually sits in the stem, where no order helps, while later
    blocks can still be ordered to keep less alive (more of them in SRAM).
    """
    return tuple(sorted(prof.live, reverse=True))


def vela_peak(model: IRModel, flipped: Sequence[str] = ()) -> int:
    """Peak of the memory model in the order Vela runs ``model`` with ``flipped`` nodes' inputs swapped."""
    return memory.profile(model, memory.vela_order(model, flipped=flipped)).peak


def _vela_score(model: IRModel, flipped: Sequence[str] = ()) -> tuple[int, ...]:
    return score(memory.profile(model, memory.vela_order(model, flipped=flipped)))


def choose_flips(model: IRModel, *, max_rounds: int = 3) -> tuple[list[str], int]:
    """Commutative nodes whose inputs to swap so that Vela's order scores best (local search, :func:`score`)."""
    names = [n.name for n in commutative_nodes(model)]
    flipped: set[str] = set()
    best = _vela_score(model)
    for _ in range(max_rounds):
        improved = False
        for name in names:
            trial = flipped ^ {name}
            got = _vela_score(model, sorted(trial))
            if got < best:
                flipped, best, improved = trial, got, True
        if not improved:
            break
    return sorted(flipped), best[0]


@dataclass(frozen=True)
class ScheduleMemoryPass(Pass):
    """Reorder nodes for the lowest peak of live activations, and make Vela follow by swapping Add inputs.

    Rewrite: ``graph.nodes`` is put in the order found by :func:`min_peak_order`
    (the emitter writes the TFLite in this order, which is what a CPU runtime
    follows), and the inputs of commutative binary ops (Add, Mul, Max, Min with
    two same-shaped activation inputs) are swapped where that lowers the peak
    of the order Vela will run (:func:`nirc.memory.vela_order`).

    Why it is exact: any topological order computes the same values, and
    ``a + b = b + a`` (likewise ``*``, max, min) in ONNX and in TFLite's int8
    kernels, which rescale both operands symmetrically.

    Kept: the model's own order when the search finds nothing strictly better
    (by :func:`score`: the peak, then the next-highest step, ...);
    swaps that do not improve that score for Vela's order, or (with a target) that raise Vela's
    estimated cycles. The decision log has the peaks of the model order, the
    optimal order and Vela's order before and after, and Vela's SRAM and
    DRAM (arena) use when a target is given.
    """

    name = "schedule-memory"
    exact = True
    accuracy_guarded = True

    max_states: int = 50_000
    steer_vela: bool = True
    cost_fn: CostFn | None = field(default=None, compare=False, repr=False)
    decisions: list[dict[str, Any]] = field(default_factory=list, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_states < 1:
            raise ValueError(f"schedule-memory: max_states must be positive, got {self.max_states}")

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        self.decisions.clear()
        graph = model.graph
        if len(graph.nodes) < 3:
            return False
        own = memory.profile(model)
        own_peak = own.peak
        sched = min_peak_order(model, max_states=self.max_states)
        by_name = {n.name: n for n in graph.nodes}
        new = memory.profile(model, [by_name[name] for name in sched.order])
        decision: dict[str, Any] = {
            "peak_model_order": own_peak,
            "peak_best_order": sched.peak,
            "optimal": sched.optimal,
            "states": sched.states,
        }
        changed = False
        if score(new) < score(own):
            graph.nodes = [by_name[name] for name in sched.order]
            changed = True
            ctx.count("reordered")
        decision["reordered"] = changed
        if self.steer_vela:
            changed |= self._steer(model, ctx, decision)
        ctx.decide(decision)
        self.decisions.append(decision)
        return changed

    def _steer(self, model: IRModel, ctx: PassContext, decision: dict[str, Any]) -> bool:
        before = vela_peak(model)
        flips, after = choose_flips(model)
        decision["peak_vela_order"] = [before, after]
        decision["swapped"] = flips
        if not flips:
            return False
        target = ctx.target
        if target is not None:
            cost_fn = self.cost_fn or oracle_cost
            try:
                old = cost_fn(model.to_proto(check=False), target)
                trial = model.copy()
                _swap(trial, flips)
                new = cost_fn(trial.to_proto(check=False), target)
            except NircError as exc:
                logger.warning("schedule-memory: cannot cost the swaps, keeping Vela's order (%s)", exc)
                decision["swapped"] = []
                return False
            decision["vela_cycles"] = [old.cycles, new.cycles]
            decision["vela_sram_bytes"] = [old.sram_used_bytes, new.sram_used_bytes]
            decision["vela_dram_bytes"] = [old.dram_used_bytes, new.dram_used_bytes]
            if new.cycles > old.cycles:
                decision["swapped"] = []
                decision["reason"] = "swaps raise Vela's cycles"
                return False
        _swap(model, flips)
        ctx.count("swapped_inputs", len(flips))
        return True


def _swap(model: IRModel, names: Sequence[str]) -> None:
    wanted = set(names)
    for node in model.graph.nodes:
        if node.name in wanted:
            node.inputs[0], node.inputs[1] = node.inputs[1], node.inputs[0]
