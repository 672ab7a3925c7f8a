"""Compiled (numba) pricing of one engine step, bit-for-bit equal to `costmodel.sd_step_s` on length-1 arrays.

`pack_cost(cost, k)` flattens a `CostModel` into a tuple of fixed-dtype numpy arrays; `step_time_s` and
`decode_step_time_s` price one step from it and can be called from other `@njit` functions:

    packed = pack_cost(cost, k)
    step_time_s(packed, n_decode, context_decode, n_prefill, prefill_tokens, prefill_tokens_sq,
                prefill_tokens_context, prefill_context, context_max)
        == float(sd_step_s(cost, k, [n_decode], [context_decode], [n_prefill], [prefill_tokens],
                           [prefill_tokens_sq], [prefill_tokens_context], [prefill_context], [context_max])[0])
    decode_step_time_s(packed, n_decode, context_decode, context_max)
        == float(sd_step_s(cost, k, [n_decode], [context_decode], context_max=[context_max])[0])

`context_max` may be left out (or -1): it is then `context_decode`, as in `sd_step_s`.

Bit-identity means the same IEEE operations in the same order as numpy performs them:

* linear parts start from 0.0 and add `value` (const) or `value * float(feature)` in the coefficient dict's
  insertion order; integer features are converted to float64 where numpy converts them, and `n * (k + 1)` and
  `context + j * n` are int64 arithmetic, as in `sd_step_s`.
* `np.maximum` is `a if a > b or a is NaN else b` (numpy's rule, signed zeros and NaN included).
* The profile's `[step]` terms (`StepModel`) are applied in sd_step_s's order: the decode part times sd_factor
  plus the attention terms / 1000, then the prefill forwards, then the step-type overhead / 1000.
* The short-forward regime (`PhaseModel.short_below`) replaces the form's value by the `short` linear part.
* The k draft forwards are summed the way `ndarray.sum(axis=0)` sums a (k, 1) array: 0.0 + numpy's pairwise sum
  (sequential below 8 terms, 8 accumulators up to 128, halving above), not always left to right.
* `x ** p` in the pnorm form is numpy's own float64 power loop, called through its function pointer (registered
  with LLVM under a symbol name at import, so compiled and cached code finds it in any process): on AVX-512
  machines numpy computes it with SVML, which differs from libm `pow` (what numba's `**` calls) in the last bit
  for a few percent of inputs. `x ** 0.5` and `x ** 2.0` are `sqrt(x)` and `x * x`, as in numpy. Should the
  loop not be found (an unexpected numpy layout), the kernel falls back to libm `pow` (slowly, through a ctypes
  callback) with a warning, and bit-identity of pnorm profiles is then not guaranteed (`NUMPY_POW_LOOP` False).
"""

from __future__ import annotations

import ctypes
import math
import warnings

import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from lapsbench.costmodel import FEATURES, CostModel, PhaseModel
from lapsbench.errors import LapsbenchError

__all__ = ["pack_cost", "step_time_s", "decode_step_time_s", "NUMPY_POW_LOOP"]

# Phase-model slots in the packed arrays.
TARGET, TARGET_PREFILL, DRAFT, DRAFT_PREFILL = range(4)
FORMS = {"max": 1, "pnorm": 2}  # anything else is priced as "linear" (0), as PhaseModel.time_s does
MAX_TERMS = len(FEATURES)

ROWS = 12  # term rows: 2 * slot (memory / linear part), 2 * slot + 1 (compute part), 8 + slot (short regime)
# ints layout
_I_FIXED, _I_K, _I_PRESENT, _I_FORM, _I_NTERMS = 0, 1, 2, 6, 10  # PRESENT, FORM: 4 slots; NTERMS: 12 rows
_I_SHORT, _I_STEP = 22, 26  # SHORT: 4 slots (short regime present); STEP: the profile has a [step] table
_I_SPAN, _I_NBS, _I_BS = 27, 28, 29  # span multiple; count of graph batch sizes, then the sizes
MAX_BATCH_SIZES = 128
_N_INTS = _I_BS + MAX_BATCH_SIZES
# floats layout
_F_STEP, _F_DRAFT_STEP, _F_PREFILL_PER_TOKEN, _F_P, _F_INV_P = 0, 1, 2, 3, 7  # P, INV_P: 4 slots
_F_SHORT_BELOW = 11  # 4 slots
_F_SD_FACTOR, _F_DECODE_MS, _F_PREFILL_MS, _F_MIXED_MS, _F_CTX, _F_CTX_MAX, _F_BATCH_CTX_MAX = range(15, 22)
_N_FLOATS = 22


# ------------------------------------------------------------------------------- numpy's float64 power loop

def _numpy_pow_loop() -> tuple[int, int]:
    """(address, data pointer) of the inner loop numpy's `power` ufunc runs for float64 `dd->d`, read from the
    PyUFuncObject (`functions[i]`, `data[i]`) and checked against `np.power` itself; (0, 0) if anything is off."""
    try:
        ufunc = np.power
        base = id(ufunc) + object.__basicsize__  # PyObject_HEAD
        cint, ptr = ctypes.sizeof(ctypes.c_int), ctypes.sizeof(ctypes.c_void_p)
        nin, nout, nargs = (ctypes.c_int.from_address(base + cint * i).value for i in range(3))
        off = 4 * cint  # nin, nout, nargs, identity
        off += -off % ptr
        functions = ctypes.c_void_p.from_address(base + off).value
        data = ctypes.c_void_p.from_address(base + off + ptr).value
        ntypes = ctypes.c_int.from_address(base + off + 2 * ptr).value
        after_ints = off + 2 * ptr + 2 * cint  # ntypes, reserved1
        after_ints += -after_ints % ptr
        name = ctypes.c_char_p(ctypes.c_void_p.from_address(base + after_ints).value).value
        typecodes = ctypes.c_void_p.from_address(base + after_ints + ptr).value
        if (nin, nout, nargs, ntypes, name) != (2, 1, 3, ufunc.ntypes, b"power") or not functions or not typecodes:
            return 0, 0
        raw = ctypes.string_at(typecodes, 3 * ntypes)
        expect = bytes(np.dtype(c).num for sig in ufunc.types for c in sig.replace("->", ""))
        if raw != expect:
            return 0, 0
        i = ufunc.types.index("dd->d")
        fn = ctypes.c_void_p.from_address(functions + ptr * i).value
        loop_data = ctypes.c_void_p.from_address(data + ptr * i).value if data else None
        if not fn:
            return 0, 0
        loop = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)(fn)
        xs = np.linspace(0.0, 2.0, 97)
        dims = np.ones(1, np.int64)
        steps = np.array([8, 0, 8], np.int64)
        for e in (4.0, 8.0, 0.25, 0.125, 3.3, 1.5):  # exponents _pow hands to the loop (not 2.0, 0.5)
            x, y, out = np.zeros(1), np.full(1, e), np.zeros(1)
            argv = np.array([x.ctypes.data, y.ctypes.data, out.ctypes.data], np.uint64)
            for v in xs:
                x[0] = v
                loop(argv.ctypes.data, dims.ctypes.data, steps.ctypes.data, loop_data)
                if out[0] != (np.array([v]) ** e)[0]:
                    return 0, 0
        return int(fn), int(loop_data or 0)
    except Exception:  # noqa: BLE001 - any surprise means: not found
        return 0, 0


_POW_SYMBOL = "lapsbench_costkernel_numpy_pow_loop"
_LOOP_TYPE = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int64),
                              ctypes.POINTER(ctypes.c_int64), ctypes.c_void_p)


@_LOOP_TYPE
def _libm_pow_loop(args, dims, steps, data):  # pragma: no cover - only where numpy's loop is not found
    x = ctypes.c_double.from_address(args[0]).value
    e = ctypes.c_double.from_address(args[1]).value
    try:
        out = math.pow(x, e)
    except (OverflowError, ValueError):
        out = float(np.power(np.float64(x), e))
    ctypes.c_double.from_address(args[2]).value = out


_POW_FN, _POW_DATA = _numpy_pow_loop()
NUMPY_POW_LOOP = _POW_FN != 0 and _POW_DATA == 0
if not NUMPY_POW_LOOP:
    warnings.warn("lapsbench.costkernel: numpy's float64 power loop not found; pnorm profiles are priced with libm "
                  "pow and may differ from costmodel.sd_step_s in the last bit", RuntimeWarning, stacklevel=1)
# The compiled code calls the loop by symbol name, resolved when it is linked in this process (cached code
# included): packed costs hold no addresses, so they may be pickled to other processes.
llvm_binding.add_symbol(_POW_SYMBOL, _POW_FN if NUMPY_POW_LOOP else ctypes.cast(_libm_pow_loop, ctypes.c_void_p).value)


@intrinsic
def _numpy_pow(typingctx, x, e):
    """numpy's float64 power inner loop on one element: loop(args, dims=[1], steps=[8, 0, 8], NULL), the call
    numpy makes for `array ** python_float` (the exponent broadcast, stride 0)."""
    if not (isinstance(x, types.Float) and isinstance(e, types.Float)):
        return None
    sig = types.float64(types.float64, types.float64)

    def codegen(context, builder, signature, args):
        xv, ev = args
        f64, i64, i8p = ir.DoubleType(), ir.IntType(64), ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i8p.as_pointer(), i64.as_pointer(), i64.as_pointer(), i8p])
        loop = cgutils.get_or_insert_function(builder.module, fnty, _POW_SYMBOL)
        xs = cgutils.alloca_once_value(builder, xv)
        es = cgutils.alloca_once_value(builder, ev)
        out = cgutils.alloca_once_value(builder, ir.Constant(f64, 0.0))
        argv = cgutils.alloca_once(builder, i8p, size=3)
        for j, ptr in enumerate((xs, es, out)):
            builder.store(builder.bitcast(ptr, i8p), builder.gep(argv, [ir.Constant(i64, j)]))
        dims = cgutils.alloca_once_value(builder, ir.Constant(i64, 1))
        steps = cgutils.alloca_once(builder, i64, size=3)
        for j, step in enumerate((8, 0, 8)):
            builder.store(ir.Constant(i64, step), builder.gep(steps, [ir.Constant(i64, j)]))
        builder.call(loop, [argv, dims, steps, ir.Constant(i8p, None)])
        return builder.load(out)

    return sig, codegen


@njit(cache=True)
def _pow(x, e):
    """`np.asarray([x]) ** e` for a Python float exponent e."""
    if e == 0.5:  # numpy: fast_scalar_power -> np.sqrt
        return np.sqrt(x)
    if e == 2.0:  # numpy: the power loop's scalar-exponent fast path (np.square before numpy 2)
        return x * x
    return _numpy_pow(x, e)


# ------------------------------------------------------------------------------------------------ packing

def _pack_phase(model: PhaseModel | None, slot: int, ints: np.ndarray, floats: np.ndarray,
                feat: np.ndarray, vals: np.ndarray, where: str) -> None:
    if model is None:
        return
    ints[_I_PRESENT + slot] = 1
    form = FORMS.get(model.form, 0)
    ints[_I_FORM + slot] = form
    parts = [(2 * slot, model.coef)] + ([(2 * slot + 1, model.coef_compute)] if form else [])
    if model.short_below > 0:
        ints[_I_SHORT + slot] = 1
        floats[_F_SHORT_BELOW + slot] = model.short_below
        parts.append((8 + slot, model.short))
    for row, coefs in parts:
        for j, (name, value) in enumerate(coefs.items()):
            if name not in FEATURES:
                raise LapsbenchError(f"{where}: {name!r} is not a feature; expected one of {', '.join(FEATURES)}")
            feat[row, j] = FEATURES.index(name)
            vals[row, j] = value
        ints[_I_NTERMS + row] = len(coefs)
    if form == 2:
        floats[_F_P + slot] = model.p
        floats[_F_INV_P + slot] = 1.0 / model.p  # the exponent sd_step_s uses, computed the same (Python) way


def pack_cost(cost: CostModel, k: int) -> tuple:
    """Everything the compiled pricing needs, as a tuple of contiguous float64/int64 numpy arrays (and no Python
    objects), so it can be passed into other @njit functions:
    (ints int64[157], floats float64[22], term features int64[12, 8], term values float64[12, 8])."""
    k = int(k)
    ints = np.zeros(_N_INTS, np.int64)
    floats = np.zeros(_N_FLOATS, np.float64)
    feat = np.zeros((ROWS, MAX_TERMS), np.int64)
    vals = np.zeros((ROWS, MAX_TERMS), np.float64)
    ints[_I_K] = k
    if cost.is_fixed:
        ints[_I_FIXED] = 1
        floats[_F_STEP] = cost.fixed_step_s
        floats[_F_DRAFT_STEP] = k * cost.fixed_draft_step_s if k > 0 else 0.0  # as sd_step_s computes it
        floats[_F_PREFILL_PER_TOKEN] = cost.fixed_prefill_s_per_token
    else:
        if cost.target is None:
            raise LapsbenchError(f"profile {cost.name}: no target model")
        cost.check_k(k)
        if k > 0 and cost.draft is None:
            raise LapsbenchError(f"profile {cost.name}: speculation k > 0 needs a draft model in the profile")
        for slot, model, label in ((TARGET, cost.target, "target"), (TARGET_PREFILL, cost.target_prefill, "prefill"),
                                   (DRAFT, cost.draft, "draft"), (DRAFT_PREFILL, cost.draft_prefill, "draft prefill")):
            _pack_phase(model, slot, ints, floats, feat, vals, f"profile {cost.name}: {label}")
        st = cost.step
        if st is not None:
            ints[_I_STEP] = 1
            floats[_F_SD_FACTOR:_F_BATCH_CTX_MAX + 1] = (st.sd_factor, st.decode_ms, st.prefill_ms, st.mixed_ms,
                                                         st.context, st.context_max, st.batch_context_max)
            if len(st.batch_sizes) > MAX_BATCH_SIZES:
                raise LapsbenchError(f"profile {cost.name}: step.batch_sizes has {len(st.batch_sizes)} sizes; "
                                     f"expected at most {MAX_BATCH_SIZES}")
            ints[_I_SPAN] = st.span_multiple
            ints[_I_NBS] = len(st.batch_sizes)
            ints[_I_BS:_I_BS + len(st.batch_sizes)] = st.batch_sizes
    return ints, floats, feat, vals


# ------------------------------------------------------------------------------------------------- pricing

@njit(cache=True)
def _maximum(a, b):
    """np.maximum on one element: the first if larger or NaN, else the second."""
    return a if (a > b or a != a) else b


@njit(cache=True)
def _linear(feat, vals, ints, row, batch, tokens, context, tokens_sq, tokens_context, context_max,
            batch_context_max):
    total = 0.0
    for j in range(ints[_I_NTERMS + row]):
        f = feat[row, j]
        v = vals[row, j]
        if f == 0:
            total = total + v
        elif f == 1:
            total = total + v * batch
        elif f == 2:
            total = total + v * tokens
        elif f == 3:
            total = total + v * context
        elif f == 4:
            total = total + v * tokens_sq
        elif f == 5:
            total = total + v * tokens_context
        elif f == 6:
            total = total + v * context_max
        else:
            total = total + v * batch_context_max
    return total


@njit(cache=True)
def _phase_s(packed, slot, batch, tokens, context, tokens_sq, tokens_context, context_max, batch_context_max):
    """PhaseModel.time_s on one element."""
    ints, floats, feat, vals = packed
    ms = _linear(feat, vals, ints, 2 * slot, batch, tokens, context, tokens_sq, tokens_context, context_max,
                 batch_context_max)
    form = ints[_I_FORM + slot]
    if form == 1:
        ms = _maximum(ms, _linear(feat, vals, ints, 2 * slot + 1, batch, tokens, context, tokens_sq, tokens_context,
                                  context_max, batch_context_max))
    elif form == 2:
        p, inv_p = floats[_F_P + slot], floats[_F_INV_P + slot]
        mem = _maximum(ms, 0.0)
        comp = _maximum(_linear(feat, vals, ints, 2 * slot + 1, batch, tokens, context, tokens_sq, tokens_context,
                                context_max, batch_context_max), 0.0)
        top = _maximum(_maximum(mem, comp), 1e-300)
        ms = top * _pow(_pow(mem / top, p) + _pow(comp / top, p), inv_p)
    if ints[_I_SHORT + slot] != 0 and tokens < floats[_F_SHORT_BELOW + slot]:
        ms = _linear(feat, vals, ints, 8 + slot, batch, tokens, context, tokens_sq, tokens_context, context_max,
                     batch_context_max)
    return ms / 1000.0


@njit(cache=True)
def _draft_one(packed, nf, context_decode, n_decode, context_max, j):
    """Draft forward j: CostModel.draft_s at context + j * n and context_max + j (int64; a padded span: the
    same for every forward), guarded by n > 0."""
    c = float(context_decode + j * n_decode)
    m = float(context_max + (0 if packed[0][_I_SPAN] > 0 else j))
    t = _phase_s(packed, np.int64(DRAFT), nf, nf, c, nf, c, m, nf * m)
    return t if nf > 0 else 0.0


@njit(cache=True)
def _draft_block(packed, nf, context_decode, n_decode, context_max, lo, count):
    """numpy's DOUBLE_pairwise_sum over draft forwards lo .. lo+count-1, for count <= 128 (PW_BLOCKSIZE)."""
    if count < 8:
        res = -0.0
        for i in range(count):
            res += _draft_one(packed, nf, context_decode, n_decode, context_max, lo + i)
        return res
    stop = count - count % 8
    r = np.empty(8)
    for m in range(8):
        r[m] = _draft_one(packed, nf, context_decode, n_decode, context_max, lo + m)
    for i in range(8, stop, 8):
        for m in range(8):
            r[m] += _draft_one(packed, nf, context_decode, n_decode, context_max, lo + i + m)
    res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
    for i in range(stop, count):
        res += _draft_one(packed, nf, context_decode, n_decode, context_max, lo + i)
    return res


@njit(cache=True)
def _draft_sum(packed, nf, context_decode, n_decode, context_max, k):
    """`draft_s(...).sum(axis=0)` over the k draft forwards of a (k, 1) array: 0.0 + numpy's pairwise sum, whose
    blocks above 128 terms halve (at a multiple of 8) recursively; the recursion is unrolled onto a stack here."""
    if k <= 128:
        return 0.0 + _draft_block(packed, nf, context_decode, n_decode, context_max, np.int64(0), k)
    lo = np.zeros(64, np.int64)
    cnt = np.zeros(64, np.int64)
    phase = np.zeros(64, np.int64)  # 0: to split, 1: left half running, 2: right half running
    left = np.zeros(64)
    sp = 0
    cnt[0] = k
    while True:
        if cnt[sp] <= 128:
            ret = _draft_block(packed, nf, context_decode, n_decode, context_max, lo[sp], cnt[sp])
            sp -= 1
            while sp >= 0 and phase[sp] == 2:
                ret = left[sp] + ret
                sp -= 1
            if sp < 0:
                return 0.0 + ret
            left[sp] = ret
            phase[sp] = 2
            half = cnt[sp] // 2
            half -= half % 8
            lo[sp + 1], cnt[sp + 1], phase[sp + 1] = lo[sp] + half, cnt[sp] - half, 0
        else:
            half = cnt[sp] // 2
            half -= half % 8
            phase[sp] = 1
            lo[sp + 1], cnt[sp + 1], phase[sp + 1] = lo[sp], half, 0
        sp += 1


@njit(cache=True)
def _decode_part(packed, n_decode, context_decode, context_max):
    """Verify forward + the k draft forwards of sd_step_s (fitted profile), then the [step] decode terms."""
    ints, floats = packed[0], packed[1]
    k = ints[_I_K]
    n_real = n_decode
    if ints[_I_NBS] > 0 and n_decode > 0:  # StepModel.padded
        for i in range(ints[_I_NBS]):
            if ints[_I_BS + i] >= n_decode:
                n_decode = ints[_I_BS + i]
                break
    if ints[_I_SPAN] > 0:
        context_max = (context_max + (k + 1) + (ints[_I_SPAN] - 1)) // ints[_I_SPAN] * ints[_I_SPAN]
    nf = float(n_decode)
    q = float(n_decode * (k + 1))  # int64 product, then float64
    c = float(context_decode)
    m = float(context_max)
    denom = _maximum(nf, 1.0)
    t = _phase_s(packed, np.int64(TARGET), nf, q, c, (q * q) / denom, (q * c) / denom, m, nf * m)
    t = t if nf > 0 else 0.0
    if k > 0:
        t = t + _draft_sum(packed, nf, context_decode, n_real, context_max, k)
    if ints[_I_STEP] != 0 and n_decode > 0:
        extra = (floats[_F_CTX] * c + floats[_F_CTX_MAX] * m) + floats[_F_BATCH_CTX_MAX] * (nf * m)
        t = t * floats[_F_SD_FACTOR] + extra / 1000.0
    return t


@njit(cache=True)
def _overhead(floats, n_decode, n_prefill):
    """The [step] host overhead of a decode-only, prefill-only or mixed step, in seconds."""
    if n_decode > 0 and n_prefill > 0:
        over = floats[_F_MIXED_MS]
    elif n_decode > 0:
        over = floats[_F_DECODE_MS]
    elif n_prefill > 0:
        over = floats[_F_PREFILL_MS]
    else:
        over = 0.0
    return over / 1000.0


@njit(cache=True)
def step_time_s(packed, n_decode, context_decode, n_prefill, prefill_tokens, prefill_tokens_sq,
                prefill_tokens_context, prefill_context, context_max=-1):
    """== float(sd_step_s(cost, k, [n_decode], [context_decode], [n_prefill], [prefill_tokens],
    [prefill_tokens_sq], [prefill_tokens_context], [prefill_context], [context_max])[0]) for
    packed = pack_cost(cost, k); context_max -1 means context_decode."""
    ints, floats = packed[0], packed[1]
    if ints[_I_FIXED] != 0:
        busy = n_decode > 0 or n_prefill > 0
        t = floats[_F_STEP] if busy else 0.0
        t = t + (floats[_F_DRAFT_STEP] if n_decode > 0 else 0.0)
        return t + floats[_F_PREFILL_PER_TOKEN] * float(prefill_tokens)
    if ints[_I_PRESENT + TARGET_PREFILL] == 0:
        raise ValueError("cost model has no target prefill model")
    cmax = context_decode if context_max < 0 else context_max
    t = _decode_part(packed, n_decode, context_decode, cmax)
    nf = float(n_prefill)
    tok, sq, tc, ctx = float(prefill_tokens), float(prefill_tokens_sq), float(prefill_tokens_context), \
        float(prefill_context)
    p = _phase_s(packed, np.int64(TARGET_PREFILL), nf, tok, ctx, sq, tc, 0.0, 0.0)
    if ints[_I_K] > 0 and ints[_I_PRESENT + DRAFT_PREFILL] != 0:
        p = p + _phase_s(packed, np.int64(DRAFT_PREFILL), nf, tok, ctx, sq, tc, 0.0, 0.0)
    t = t + (p if nf > 0 else 0.0)
    if ints[_I_STEP] != 0:
        t = t + _overhead(floats, n_decode, n_prefill)
    return t


@njit(cache=True)
def decode_step_time_s(packed, n_decode, context_decode, context_max=-1):
    """== float(sd_step_s(cost, k, [n_decode], [context_decode], context_max=[context_max])[0]) for
    packed = pack_cost(cost, k): no prefill arguments, so with the fixed profile a step is busy only if it
    decodes; context_max -1 means context_decode."""
    ints, floats = packed[0], packed[1]
    if ints[_I_FIXED] != 0:
        t = floats[_F_STEP] if n_decode > 0 else 0.0
        t = t + (floats[_F_DRAFT_STEP] if n_decode > 0 else 0.0)
        return t + 0.0
    cmax = context_decode if context_max < 0 else context_max
    t = _decode_part(packed, n_decode, context_decode, cmax)
    if ints[_I_STEP] != 0:
        t = t + _overhead(floats, n_decode, 0)
    return t
