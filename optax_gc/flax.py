"""Fan-in axes of every kernel of a Flax model, read from its layers.

``optax_gc.centralize()`` on its own decides from a kernel's rank: every axis
but the last (Flax layout). That is exactly the paper's rule on Dense and Conv
kernels and wrong on the layers transformers are made of:

* ``MultiHeadAttention`` query/key/value kernels are ``(in, heads, head_dim)``
  with fan-in axis 0 alone (the rank rule would mix the heads), and their
  biases ``(heads, head_dim)`` are biases (the rank rule would centralize
  them over the heads);
* an ``Embed`` table ``(vocab, features)`` is a lookup table, not a weight
  vector per output unit; centralizing its sparse gradient over the
  vocabulary would move every row at every step;
* ``LinearGeneral``/``DenseGeneral`` with several input axes or batch axes,
  ``Einsum`` kernels, ``ConvTranspose(transpose_kernel=True)`` (whose output
  axis is second to last) and linen ``ConvLocal`` (one kernel per output
  pixel) each have their own fan-in.

:func:`fan_in_axes` (Flax NNX) and :func:`linen_fan_in_axes` (Flax linen)
give every parameter its fan-in axes from the type and configuration of the
layer that owns it, as a tree that ``centralize(reduction_axes=...)``
accepts::

    tx = optax.chain(
        optax_gc.centralize(reduction_axes=fan_in_axes(model)), optax.adam(1e-3)
    )

The rules, per layer type (found through the class's MRO, so subclasses
such as ``nnx.LoRALinear`` inherit them):

  =====================================  ===================================
  layer and parameter                    fan-in axes of a kernel ``W``
  =====================================  ===================================
  ``Linear``/``Dense`` kernel            ``(in,)`` of ``(in, out)``
  ``LinearGeneral``/``DenseGeneral``     the ``in_features``/``axis`` axes of
                                         ``(*batch, *in, *out)``; batch axes
                                         index separate output units
  ``Conv`` (incl. grouped, depthwise)    all but the last of
                                         ``(*k, in / groups, out)``
  ``ConvTranspose``                      all but ``out``: ``(*k, in, out)``,
                                         or ``(*k, out, in)`` with
                                         ``transpose_kernel=True``
  linen ``ConvLocal``                    the ``k * in`` axis of
                                         ``(*out_pixels, k * in, out)``
  ``Einsum``                             the kernel's axes whose letter is
                                         not in the output (contracted)
  ``MultiHeadAttention`` q/k/v, out      by the ``LinearGeneral`` rule:
                                         ``(0,)`` of ``(in, heads, head_dim)``
                                         and ``(0, 1)`` of
                                         ``(heads, head_dim, out)``
  ``LoRA`` ``lora_a``/``lora_b``         ``(0,)`` each: each factor is a
                                         linear map with its own output units
  biases, ``Embed``, every norm's        ``None``: not weight vectors
  scale/bias, batch statistics, caches
  =====================================  ===================================

  A kernel whose fan-in has one entry per unit (``Linear(1, n)``, a
  depthwise 1x1 conv, an ``Einsum`` that only scales) gets ``None`` too:
  ``centralize`` would leave it alone anyway, and the tree says what happens.

The design (stacked layers, unknown layers, why plain ``centralize()``
stays rank-based, how NNX and linen models are walked) is in the docs,
``docs/layouts.md``, section "How ``optax_gc.flax`` reads a model".

Example:
  >>> import optax
  >>> from flax import nnx
  >>> import optax_gc
  >>> from optax_gc.flax import fan_in_axes
  >>> attention = nnx.MultiHeadAttention(
  ...     num_heads=2, in_features=8, decode=False, rngs=nnx.Rngs(0))
  >>> axes = fan_in_axes(attention)
  >>> axes["query"], axes["out"]
  ({'bias': None, 'kernel': (0,)}, {'bias': None, 'kernel': (0, 1)})
  >>> tx = optax.chain(optax_gc.centralize(reduction_axes=axes), optax.sgd(0.1))
  >>> optimizer = nnx.Optimizer(attention, tx, wrt=nnx.Param)
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeAlias

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx
from flax.linen import recurrent as _linen_recurrent

from ._layouts import Axes, fan_in_size, rank_rule_axes
from ._options import keyname, normalize_axes

__all__ = [
    "UnknownLayerWarning",
    "einsum_fan_in_axes",
    "fan_in_axes",
    "linen_fan_in_axes",
]

Rule: TypeAlias = Callable[[Any], Mapping[str, Axes]]
"""A layer's rule: given the layer, each parameter name to its fan-in axes.

Axes are best counted from the end (``-1`` is the last axis), so that a
stack of layers made with ``vmap``/``scan`` works too. Names the rule leaves
out count as unknown.
"""

Unknown: TypeAlias = Literal["leave", "layout"]

_UNKNOWN = ("leave", "layout")

# The call a linen layer was first made with: (args, kwargs), or None.
_Call: TypeAlias = tuple[tuple, dict] | None
_InternalRule: TypeAlias = Callable[[Any, _Call], Mapping[str, Axes]]


class UnknownLayerWarning(UserWarning):
    """Parameters of rank >= 2 owned by layers no rule knows.

    Raised once per call of :func:`fan_in_axes` or :func:`linen_fan_in_axes`,
    naming every such parameter, its shape and its layer's type.
    """


def einsum_fan_in_axes(einsum_str: str, kernel_ndim: int) -> Axes:
    """The fan-in axes of an ``Einsum`` kernel: those contracted away.

    The kernel is the second operand. Its axes whose letter is not in the
    output are summed over for every output entry: those are the fan-in.
    Axes whose letter is in the output (features, or heads shared with the
    input) index separate output units. An ellipsis in the kernel is
    fan-in only if the output has none.

    Args:
      einsum_str: the equation, ``"lhs,kernel->out"`` (explicit output).
      kernel_ndim: the kernel's rank, to expand an ellipsis.

    Returns:
      The fan-in axes counted from the end (negative), or ``None`` if no
      axis is contracted (the kernel only scales).

    Raises:
      ValueError: if the equation is not explicit with two operands, or its
        kernel operand does not have ``kernel_ndim`` axes.

    Example:
      >>> from optax_gc.flax import einsum_fan_in_axes
      >>> einsum_fan_in_axes("btd,dhk->bthk", 3)  # (d, h, k): fan-in d
      (-3,)
      >>> einsum_fan_in_axes("bhd,hdk->bhk", 3)  # per-head kernel
      (-2,)
      >>> einsum_fan_in_axes("bd,d->bd", 1) is None  # elementwise scale
      True
    """
    spec = einsum_str.replace(" ", "")
    operands, arrow, output = spec.partition("->")
    if not arrow or operands.count(",") != 1:
        raise ValueError(
            f"Einsum equation {einsum_str!r} must be explicit with two operands, "
            "'input,kernel->output'."
        )
    kernel = operands.split(",")[1]
    letters: list[str | None]  # None marks an axis of the ellipsis
    if "..." in kernel:
        before, _, after = kernel.partition("...")
        n_ellipsis = kernel_ndim - len(before) - len(after)
        letters = [*before, *([None] * max(n_ellipsis, 0)), *after]
    else:
        letters = list(kernel)
    if len(letters) != kernel_ndim:
        named = len(kernel.replace("...", ""))
        if "..." in kernel:
            tokens = f"{named + 1} tokens ({named} axes and an ellipsis)"
            fits = f"rank {named} or more"
        else:
            tokens, fits = f"{named} tokens", f"rank {named}"
        raise ValueError(
            f"Einsum equation {einsum_str!r} gives the kernel {kernel!r}, "
            f"{tokens}, which fits a kernel of {fits}, but the kernel has rank "
            f"{kernel_ndim}. Fix the equation or the kernel shape."
        )
    contracted = [
        i
        for i, c in enumerate(letters)
        if ("..." not in output if c is None else c not in output)
    ]
    return tuple(i - kernel_ndim for i in contracted) or None


def _span(start: int, stop: int) -> tuple[int, ...]:
    return tuple(range(start, stop))


def _all_but_last(ndim: int) -> tuple[int, ...]:
    return _span(-ndim, -1)


def _transpose_conv(ndim: int, transpose_kernel: bool) -> tuple[int, ...]:
    # transpose_kernel=True stores (*k, out, in): the output axis is -2.
    if transpose_kernel:
        return (*_span(-ndim, -2), -1)
    return _all_but_last(ndim)


def _spatial_rank(kernel_size: Any) -> int:
    return 1 if isinstance(kernel_size, int) else len(tuple(kernel_size))


def _tuple(x: Any) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _general(n_in: int, n_out: int) -> dict[str, Axes]:
    # (*batch, *in, *out): the in axes, counted from the end.
    return {"kernel": _span(-(n_in + n_out), -n_out), "bias": None}


def _none(*names: str) -> _InternalRule:
    return lambda layer, call: dict.fromkeys(names)


_NORM = ("scale", "bias", "mean", "var")


def _nnx_rules() -> dict[type, _InternalRule]:
    return {
        nnx.Linear: lambda m, c: {"kernel": (-2,), "bias": None},
        nnx.LinearGeneral: lambda m, c: _general(
            len(m.in_features), len(m.out_features)
        ),
        nnx.Conv: lambda m, c: {
            "kernel": _all_but_last(len(m.kernel_shape)),
            "bias": None,
        },
        nnx.ConvTranspose: lambda m, c: {
            "kernel": _transpose_conv(len(m.kernel_shape), m.transpose_kernel),
            "bias": None,
        },
        nnx.Einsum: lambda m, c: {
            "kernel": einsum_fan_in_axes(m.einsum_str, len(m.kernel_shape)),
            "bias": None,
        },
        nnx.LoRA: lambda m, c: {"lora_a": (-2,), "lora_b": (-2,)},
        nnx.Embed: _none("embedding"),
        nnx.MultiHeadAttention: _none("cached_key", "cached_value", "cache_index"),
        nnx.LayerNorm: _none(*_NORM),
        nnx.RMSNorm: _none(*_NORM),
        nnx.BatchNorm: _none(*_NORM),
        nnx.GroupNorm: _none(*_NORM),
        nnx.InstanceNorm: _none(*_NORM),
        nnx.WeightNorm: _none("scales"),
        nnx.SpectralNorm: _none(),
    }


def _linen_einsum(m: Any, call: _Call) -> dict[str, Axes]:
    equation = m.einsum_str
    if call is not None:  # an equation given at call time takes precedence
        args, kwargs = call
        equation = kwargs.get("einsum_str", args[1] if len(args) > 1 else None)
        equation = equation or m.einsum_str
    return {"kernel": einsum_fan_in_axes(equation, len(m.shape)), "bias": None}


def _linen_rules() -> dict[type, _InternalRule]:
    return {
        nn.Dense: lambda m, c: {"kernel": (-2,), "bias": None},
        nn.DenseGeneral: lambda m, c: _general(
            len(_tuple(m.axis)), len(_tuple(m.features))
        ),
        _linen_recurrent.DenseParams: lambda m, c: {"kernel": (-2,), "bias": None},
        nn.Conv: lambda m, c: {
            "kernel": _all_but_last(_spatial_rank(m.kernel_size) + 2),
            "bias": None,
        },
        # (*out_pixels, k * in, out): one weight vector per pixel and channel.
        nn.ConvLocal: lambda m, c: {"kernel": (-2,), "bias": None},
        nn.ConvTranspose: lambda m, c: {
            "kernel": _transpose_conv(
                _spatial_rank(m.kernel_size) + 2, m.transpose_kernel
            ),
            "bias": None,
        },
        nn.Einsum: _linen_einsum,
        nn.Embed: _none("embedding"),
        nn.LayerNorm: _none(*_NORM),
        nn.RMSNorm: _none(*_NORM),
        nn.BatchNorm: _none(*_NORM),
        nn.GroupNorm: _none(*_NORM),
        nn.InstanceNorm: _none(*_NORM),
        nn.WeightNorm: _none(),  # its scales are named after the wrapped params
        nn.SpectralNorm: _none(),
    }


def _find_rule(
    layer: Any, user: Mapping[type, Rule] | None, builtin: Mapping[type, _InternalRule]
) -> tuple[_InternalRule | None, bool]:
    """The rule of the most specific class of ``layer``; the user's first.

    Returns the rule and whether it is the user's.
    """
    for cls in type(layer).__mro__:
        if user and cls in user:
            rule = user[cls]
            return (lambda m, c, rule=rule: rule(m)), True
        if cls in builtin:
            return builtin[cls], False
    return None, False


# A parameter's own shape, as its layer creates it before any vmap/scan
# stacks it; None marks a size the layer's config does not say.
_Pattern: TypeAlias = tuple[int | None, ...]


def _nnx_own_shapes(layer: Any) -> dict[str, _Pattern]:
    """The unstacked kernel shapes of the built-in NNX layers, from config."""
    if isinstance(layer, nnx.LoRA):
        rank = _lora_rank(layer)
        return {
            "lora_a": (layer.in_features, rank),
            "lora_b": (rank, layer.out_features),
        }
    if isinstance(layer, nnx.Linear):
        return {
            "kernel": (layer.in_features, layer.out_features),
            "bias": (layer.out_features,),
        }
    if isinstance(layer, nnx.LinearGeneral):
        batch = tuple(layer.batch_axis.values())  # as LinearGeneral builds them
        return {
            "kernel": (*batch, *layer.in_features, *layer.out_features),
            "bias": (*batch, *layer.out_features),
        }
    if isinstance(layer, nnx.Conv | nnx.ConvTranspose):
        return {"kernel": tuple(layer.kernel_shape), "bias": (layer.out_features,)}
    if isinstance(layer, nnx.Einsum):
        own: dict[str, _Pattern] = {"kernel": tuple(layer.kernel_shape)}
        if layer.bias_shape is not None:
            own["bias"] = tuple(layer.bias_shape)
        return own
    return {}


def _lora_rank(layer: Any) -> int | None:
    """The rank of a (possibly stacked) ``nnx.LoRA``, which it does not store.

    ``lora_a`` is ``(in, rank)`` and ``lora_b`` ``(rank, out)``, stacked at
    the same places; the rank is the one size every consistent placement of
    the stack agrees on (``None`` if they disagree).
    """
    sa = tuple(layer.lora_a.get_value().shape)
    sb = tuple(layer.lora_b.get_value().shape)
    if len(sa) != len(sb) or len(sa) < 2:
        return None
    ranks = set()
    for own in itertools.combinations(range(len(sa)), 2):
        stack = [i for i in range(len(sa)) if i not in own]
        a0, a1 = (sa[i] for i in own)
        b0, b1 = (sb[i] for i in own)
        same_stack = all(sa[i] == sb[i] for i in stack)
        features = (a0, b1) == (layer.in_features, layer.out_features)
        if same_stack and features and a1 == b0:
            ranks.add(a1)
    return ranks.pop() if len(ranks) == 1 else None


def _placements(stored: tuple[int, ...], own: _Pattern) -> list[tuple[int, ...]]:
    """Where a layer's own axes can sit in ``stored``: increasing positions."""
    return [
        combo
        for combo in itertools.combinations(range(len(stored)), len(own))
        if all(o is None or stored[c] == o for c, o in zip(combo, own, strict=True))
    ]


def _stack_axes(combo: tuple[int, ...], ndim: int) -> set[tuple[int, ...]]:
    """The stack axes a placement leaves, from the start and from the end."""
    rest = tuple(i for i in range(ndim) if i not in combo)
    return {rest, tuple(i - ndim for i in rest)}


def _locate(
    spec: Any,
    stored: tuple[int, ...],
    own: _Pattern,
    where: str,
    siblings: Mapping[str, tuple[tuple[int, ...], _Pattern]] | None = None,
) -> tuple[int, ...]:
    """A rule's axes of a layer's own shape, found in its stacked shape.

    ``vmap``/``scan`` insert the stack axes anywhere (``out_axes``,
    ``variable_axes``); the layer's own axes keep their order, and every
    parameter of the layer is stacked at the same place (counted from the
    start or, for negative axes, from the end). Each placement of the own
    shape in the stored one that the layer's other parameters (``siblings``:
    stored and own shapes) allow too is a candidate; the fan-in axes must
    come out the same in all of them, or it raises: averaging over a stack
    axis would mix separate layers.
    """
    axes = normalize_axes(spec, own, f"{where} (the layer's own shape)")  # type: ignore[arg-type]
    candidates = _placements(stored, own)
    for other_stored, other_own in (siblings or {}).values():
        if len(other_own) >= len(other_stored):
            continue
        allowed: set[tuple[int, ...]] = set()
        for combo in _placements(other_stored, other_own):
            allowed |= _stack_axes(combo, len(other_stored))
        narrowed = [c for c in candidates if _stack_axes(c, len(stored)) & allowed]
        candidates = narrowed or candidates
    found = {tuple(combo[a] for a in axes) for combo in candidates}
    shown = tuple("?" if o is None else o for o in own)
    if not found:
        raise ValueError(
            f"Parameter {where} of shape {stored} does not hold its layer's own "
            f"shape {shown}: it cannot be a stack of that layer. Give its axes "
            "with rules= (counted in the stored shape)."
        )
    if len(found) > 1:
        raise ValueError(
            f"Parameter {where} of shape {stored} stacks its layer's own shape "
            f"{shown}, but the stack axes could be in several places, giving "
            f"fan-in axes {sorted(found)}. Give its axes with rules= (counted in "
            "the stored shape, e.g. {nnx.Linear: lambda layer: {'kernel': (-2,), "
            "'bias': None}} for a stack in front), or stack with a size that "
            "differs from the layer's own sizes."
        )
    return found.pop()


class _Collector:
    """Turns (path, shape, dtype, layer, name) into axes; gathers the unknown."""

    def __init__(
        self,
        *,
        unknown: Unknown,
        rules: Mapping[type, Rule] | None,
        builtin: Mapping[type, _InternalRule],
    ) -> None:
        if unknown not in _UNKNOWN:
            raise ValueError(
                f"unknown={unknown!r} is not an option. Use 'leave' (give "
                "parameters of unknown layers None) or 'layout' (every axis but "
                "the last)."
            )
        if rules is not None and not isinstance(rules, Mapping):
            raise TypeError(
                f"rules must be a mapping {{LayerClass: rule}}, got {rules!r} "
                f"({type(rules).__name__}); e.g. rules={{MyLayer: lambda layer: "
                "{'w': (-2,)}}."
            )
        for cls, rule in (rules or {}).items():
            if not isinstance(cls, type) or not callable(rule):
                raise ValueError(
                    f"rules maps {cls!r} to {rule!r}; give a layer class mapped to "
                    "a function of the layer returning {param_name: axes}."
                )
        self.unknown, self.rules, self.builtin = unknown, rules, builtin
        self.cache: dict[int, tuple[Mapping[str, Axes] | None, bool]] = {}
        self.missed: list[str] = []

    def _table(
        self, layer: Any, call: _Call, names: frozenset[str]
    ) -> tuple[Mapping[str, Axes] | None, bool]:
        """The layer's rule applied; a user rule's names must be its params."""
        if id(layer) not in self.cache:
            rule, by_user = _find_rule(layer, self.rules, self.builtin)
            table = None if rule is None else rule(layer, call)
            if by_user:
                if not isinstance(table, Mapping):
                    raise TypeError(
                        f"The rule for {type(layer).__name__} returned {table!r}; "
                        "a rule returns a dict {param_name: axes or None}."
                    )
                typos = sorted(set(table) - names)
                if typos:
                    raise ValueError(
                        f"The rule for {type(layer).__name__} gives axes for "
                        f"{', '.join(map(repr, typos))}, which the layer has no "
                        f"parameter of; its parameters are "
                        f"{', '.join(map(repr, sorted(names))) or 'none'}. Fix the "
                        "name in rules=."
                    )
            self.cache[id(layer)] = (table, by_user)
        return self.cache[id(layer)]

    def axes(
        self,
        path: tuple,
        value: Any,
        layer: Any,
        name: tuple,
        call: _Call = None,
        *,
        names: frozenset[str] = frozenset(),
        own: Mapping[str, _Pattern] | None = None,
        stored: Mapping[str, tuple[int, ...]] | None = None,
    ) -> Axes:
        """One parameter's axes.

        ``names``: the variables the layer holds (to check a user rule);
        ``own``: the layer's own (unstacked) parameter shapes, where known;
        ``stored``: the shapes its parameters have here (stacked or not).
        """
        shape = tuple(getattr(value, "shape", ()))
        where = keyname(path)
        table, by_user = (
            (None, False) if layer is None else self._table(layer, call, names)
        )
        if table is not None and len(name) == 1 and name[0] in table:
            spec = table[name[0]]
            if spec is None:
                return None
            pattern = (own or {}).get(name[0])
            # A user rule counts in the stored shape; a built-in one in the
            # layer's own shape, found inside a vmap/scan stack.
            if not by_user and pattern is not None and len(pattern) < len(shape):
                shapes = stored or {}
                siblings = {
                    n: (shapes[n], o)
                    for n, o in (own or {}).items()
                    if n != name[0] and n in shapes
                }
                axes = _locate(spec, shape, pattern, where, siblings)
            else:
                axes = normalize_axes(spec, shape, where)
            return None if fan_in_size(shape, axes) == 1 else axes
        dtype = getattr(value, "dtype", None)
        if len(shape) < 2 or dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
            return None  # every rule leaves scalars, vectors and integers alone
        self.missed.append(f"{where} {shape} in {type(layer).__name__}")
        if self.unknown == "leave":
            return None
        return rank_rule_axes(value)

    def warn(self, function: str) -> None:
        if not self.missed:
            return
        done = (
            "left them alone (None)"
            if self.unknown == "leave"
            else "gave them the layout rule (every axis but the last)"
        )
        warnings.warn(
            f"{function} knows no layer rule for {len(self.missed)} parameter(s) "
            f"of rank >= 2 and {done}: {'; '.join(self.missed)}. Pass rules="
            "{YourLayer: lambda layer: {'param_name': (-2,)}} to give their fan-in "
            "axes (counted from the end), or unknown='layout' to use the layout "
            "rule for them.",
            UnknownLayerWarning,
            stacklevel=3,
        )


def _unbox(x: Any) -> Any:
    return x.unbox() if isinstance(x, nn.meta.AxisMetadata) else x


def _nest(items: list[tuple[tuple, Axes]]) -> dict:
    """A nested dict from (key tuple, value) pairs."""
    out: dict = {}
    for keys, value in items:
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return out


def _dict_path(keys: tuple) -> tuple:
    return tuple(jax.tree_util.DictKey(k) for k in keys)


def fan_in_axes(
    model: nnx.Module,
    *,
    wrt: Any = nnx.Param,
    unknown: Unknown = "leave",
    rules: Mapping[type, Rule] | None = None,
) -> dict:
    """The fan-in axes of every parameter of a Flax NNX model, by layer type.

    Each parameter gets the fan-in axes its layer's type and configuration
    give it (see the module docstring for the table): an attention query
    kernel ``(in, heads, head_dim)`` gets ``(0,)``, its output kernel
    ``(heads, head_dim, out)`` gets ``(0, 1)``, biases, norm parameters and
    embeddings get ``None``.

    Args:
      model: a Flax NNX module.
      wrt: the filter of the parameters, the one given to ``nnx.Optimizer``
        as ``wrt`` (``nnx.Param`` by default; ``nnx.LoRAParam`` to train
        adapters only).
      unknown: what parameters of rank >= 2 of layers no rule knows get:
        ``"leave"`` (``None``) or ``"layout"`` (every axis but the last). In
        both cases one :class:`UnknownLayerWarning` names them.
      rules: extra rules, ``{LayerClass: rule}``; a rule maps a layer to
        ``{param_name: axes or None}``, axes best counted from the end.
        They take precedence over the built-in rules, class by class along
        the MRO.

    Returns:
      A nested dict keyed like ``nnx.state(model, wrt)`` whose leaves are a
      tuple of non-negative axes or ``None``, for
      ``optax_gc.centralize(reduction_axes=...)``.

    Raises:
      TypeError: if ``model`` is a linen module (use
        :func:`linen_fan_in_axes`) or not an NNX module.
      ValueError: for an unknown ``unknown`` or malformed ``rules``, or when
        a rule's axes do not fit the parameter (naming its path and shape).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from optax_gc.flax import fan_in_axes
      >>> class Block(nnx.Module):
      ...     def __init__(self, rngs):
      ...         self.embed = nnx.Embed(50, 16, rngs=rngs)
      ...         self.norm = nnx.LayerNorm(16, rngs=rngs)
      ...         self.mix = nnx.LinearGeneral((2, 8), 16, axis=(-2, -1),
      ...                                      rngs=rngs)
      ...         self.conv = nnx.Conv(16, 16, kernel_size=(3,),
      ...                              feature_group_count=16, rngs=rngs)
      >>> fan_in_axes(Block(nnx.Rngs(0)))
      {'conv': {'bias': None, 'kernel': (0, 1)},
       'embed': {'embedding': None},
       'mix': {'bias': None, 'kernel': (0, 1)},
       'norm': {'bias': None, 'scale': None}}
    """
    if isinstance(model, nn.Module):
        raise TypeError(
            "fan_in_axes takes a Flax NNX module; for a linen module call "
            "linen_fan_in_axes(module, *example_inputs)."
        )
    if not isinstance(model, nnx.Module):
        raise TypeError(
            f"fan_in_axes takes a Flax NNX module, got {type(model).__name__}."
        )
    collect = _Collector(unknown=unknown, rules=rules, builtin=_nnx_rules())
    nodes = dict(nnx.iter_graph(model))
    items = []
    for keys, variable in nnx.to_flat_state(nnx.state(model, wrt)):
        # The owning layer: the nearest module above the variable.
        k = len(keys) - 1
        while k > 0 and not isinstance(nodes.get(keys[:k]), nnx.Module):
            k -= 1
        value = variable.get_value() if isinstance(variable, nnx.Variable) else variable
        layer = nodes.get(keys[:k])
        held = {n: v for n, v in vars(layer).items() if isinstance(v, nnx.Variable)}
        stored = {
            n: tuple(v.get_value().shape)
            for n, v in held.items()
            if hasattr(v.get_value(), "shape")
        }
        axes = collect.axes(
            _dict_path(keys),
            value,
            layer,
            keys[k:],
            names=frozenset(held),
            own=_nnx_own_shapes(layer),
            stored=stored,
        )
        items.append((keys, axes))
    collect.warn("fan_in_axes")
    return _nest(items)


def linen_fan_in_axes(
    module: nn.Module,
    *args: Any,
    rngs: Any = None,
    method: Callable[..., Any] | str | None = None,
    unknown: Unknown = "leave",
    rules: Mapping[type, Rule] | None = None,
    **kwargs: Any,
) -> dict:
    """The fan-in axes of every parameter of a Flax linen model, by layer type.

    Linen creates submodules when it calls them, so the model is initialised
    on the example inputs under :func:`jax.eval_shape` (nothing is computed)
    while every submodule is recorded by its scope path. The rules are those
    of :func:`fan_in_axes`; see the module docstring.

    Args:
      module: a linen module.
      *args: example inputs, as for ``module.init`` (only shapes and dtypes
        matter; ``jax.ShapeDtypeStruct`` works).
      rngs: as for ``module.init``; by default keys for the ``"params"`` and
        ``"dropout"`` streams.
      method: as for ``module.init``.
      unknown: ``"leave"`` or ``"layout"``, as for :func:`fan_in_axes`.
      rules: extra rules ``{LayerClass: rule}``, as for :func:`fan_in_axes`.
      **kwargs: further keyword arguments of the module's call.

    Returns:
      A nested dict like ``variables["params"]`` (the params a
      ``TrainState`` holds), without ``Partitioned`` boxes, whose leaves are
      a tuple of non-negative axes or ``None``.

    Raises:
      TypeError: if ``module`` is an NNX module (use :func:`fan_in_axes`).
      ValueError: as for :func:`fan_in_axes`.

    Example:
      >>> import jax.numpy as jnp
      >>> import flax.linen as nn
      >>> from optax_gc.flax import linen_fan_in_axes
      >>> class Model(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x):
      ...         x = nn.MultiHeadDotProductAttention(num_heads=2)(x)
      ...         return nn.Dense(3)(nn.LayerNorm()(x))
      >>> axes = linen_fan_in_axes(Model(), jnp.zeros((1, 5, 8)))
      >>> axes["MultiHeadDotProductAttention_0"]["key"], axes["Dense_0"]
      ({'bias': None, 'kernel': (0,)}, {'bias': None, 'kernel': (0,)})
    """
    if isinstance(module, nnx.Module):
        raise TypeError("linen_fan_in_axes takes a linen module; use fan_in_axes.")
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"linen_fan_in_axes takes a Flax linen module, got {type(module).__name__}."
        )
    collect = _Collector(unknown=unknown, rules=rules, builtin=_linen_rules())
    layers: dict[tuple, tuple[Any, _Call]] = {}
    # Per layer: the names of its variables and its params' own shapes, read
    # inside any vmap/scan around it (there they are not stacked yet).
    held: dict[tuple, tuple[frozenset[str], dict[str, _Pattern]]] = {}

    def record(next_fun: Callable, a: tuple, kw: dict, context: Any) -> Any:
        layer = context.module
        if layer.scope is None:
            return next_fun(*a, **kw)
        path = tuple(layer.scope.path)
        call = (a, kw) if context.method_name == "__call__" else None
        if path not in layers or (layers[path][1] is None and call is not None):
            layers[path] = (layer, call)
        out = next_fun(*a, **kw)
        own = {
            col: {n: v for n, v in tree.items() if not isinstance(v, Mapping)}
            for col, tree in layer.variables.items()
        }
        held[path] = (
            frozenset(n for tree in own.values() for n in tree),
            {n: tuple(_unbox(v).shape) for n, v in own.get("params", {}).items()},
        )
        return out

    if rngs is None:
        rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    with nn.intercept_methods(record):
        variables = jax.eval_shape(
            lambda: module.init(rngs, *args, method=method, **kwargs)
        )
    params = variables.get("params", {})
    flat = jax.tree_util.tree_flatten_with_path(
        params, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata)
    )[0]
    items = []
    for path, leaf in flat:
        value = leaf.unbox() if isinstance(leaf, nn.meta.AxisMetadata) else leaf
        keys = tuple(p.key for p in path)
        k = len(keys) - 1
        while k > 0 and keys[:k] not in layers:
            k -= 1
        layer, call = layers.get(keys[:k], (None, None))
        names, own = held.get(keys[:k], (frozenset(), {}))
        node = params
        for key in keys[:k]:
            node = node[key]
        stored = {
            n: tuple(_unbox(v).shape)
            for n, v in node.items()
            if not isinstance(v, Mapping)
        }
        axes = collect.axes(
            _dict_path(keys),
            value,
            layer,
            keys[k:],
            call,
            names=names,
            own=own,
            stored=stored,
        )
        items.append((keys, axes))
    collect.warn("linen_fan_in_axes")
    return _nest(items)
