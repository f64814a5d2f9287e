"""FLOP formulas for the ops torch's counter leaves out, and for the optimizer step.

torch.utils.flop_counter counts matrix products (mm, addmm, bmm, convolutions,
fused attention's products) and nothing else: a BERT layer's LayerNorms,
GELU, softmax, dropout, residual adds, bias gradients and the embeddings'
backward went uncounted, and so did the optimizer. These formulas are passed
to FlopCounterMode as its `custom_mapping` (not registered globally: torch's
registry refuses to replace its own attention entries, and other users of
the counter in the process keep torch's numbers).

The convention (what `test_formulas.py` re-derives by hand for a BERT layer):

- *Model FLOPs* (Chowdhery et al., PaLM, 2022, App. B): the arithmetic the
  math needs, not what a kernel re-materialises. So fused attention's
  backward is its 4 gradient products, not the 5 torch counts (it adds the
  flash kernel's recomputation of QK^T), and a fused kernel and the
  decomposed ("math") path count the same for the same inputs.
- A matrix product is 2 FLOPs per multiply-add (torch); addmm adds 1 per
  output element for the bias.
- Every other op: FLOPs per element of the tensor it writes (reductions: per
  element read), one FLOP per scalar add, subtract, multiply, divide or
  compare, and one per transcendental (exp, log, erf, tanh, sqrt, rsqrt):

  ============================  =========  =====================================
  op                            per elem.  derivation
  ============================  =========  =====================================
  add/sub/mul/div, neg, pow,       1       (add with alpha != 1: 2)
  exp, log, sqrt, rsqrt, erf,
  tanh, relu
  addcmul, addcdiv, lerp           3       two products/quotient and a sum
  sum, mean (per input elem.)      1
  sigmoid                          4       1 / (1 + exp(-x))
  silu                             5       x * sigmoid(x)
  GELU, erf form (BERT)            5       0.5 * x * (1 + erf(x / sqrt 2))
  GELU, tanh form                  9       0.5x(1 + tanh(c(x + 0.044715 x^3)))
  GELU backward, erf / tanh     11 / 18    g * (Phi(x) + x phi(x)); chain rule
  tanh / sigmoid backward          3       g (1 - y^2); g y (1 - y)
  silu backward                    9       g s (1 + x (1 - s))
  softmax / log-softmax            5       max, subtract, exp, sum, divide
  their backward                   4       y * (g - sum(g * y)) / g - e^y sum g
  LayerNorm forward             5 (+1+1)   mean, centre, square, sum, scale;
                                           (+ weight, + bias)
  LayerNorm backward, input       10       x-hat again (2), g = dy w, two row
                                           sums (3), dx = rstd (g - a - x-hat b)
                 weight / bias    2 / 1    sum(dy x-hat) / sum(dy)
  dropout forward / backward     2 / 2     mask / (1 - p), times input
  embedding lookup                 0       a gather
  embedding backward               1       per gradient element: an index-add
  NLL loss fwd / bwd               1       per sample
  ============================  =========  =====================================

  Mask construction (compare, where, logical ops), copies, views, gathers
  and random-number generation are not arithmetic and count 0.
- Fused attention, per score element (b x h_q x s_q x s_k): forward 5
  (softmax) + 1 for an additive mask + 2 for dropout, plus the scaling of q
  and k by sqrt(scale) (1 per element of each, as the math path does it);
  backward 4 (softmax) + 1 (dropout), the scalings again. Causal masking is
  counted over the full score matrix, as torch counts the products.

The optimizer step runs outside the counter, so `optimizer_step_flops` gives
it per step from the optimizer's type, options and the parameters that have
a gradient (what torch's single-tensor kernels compute; checked against a
counted step in the tests): AdamW 13 per element + 1 for decoupled weight
decay (+1 amsgrad), SGD 2 + 2 for weight decay + 2 for momentum (+1 with
dampening, +2 Nesterov);
plus 1 per parameter tensor for Adam's step counter.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch.utils import flop_counter as fc

_aten = torch.ops.aten

Shape = Any  # torch.Size, or a tuple of them for multi-output ops


def _numel(shape: Shape) -> int:
    if shape is None:
        return 0
    if isinstance(shape, (tuple, list)) and shape and isinstance(shape[0], (tuple, list, torch.Size)):
        shape = shape[0]  # multi-output op: its main result
    return math.prod(shape)


def _per_out(k: int) -> Callable[..., int]:
    def formula(*args, out_shape=None, **kwargs) -> int:
        return k * _numel(out_shape)
    return formula


def _per_in(k: int) -> Callable[..., int]:
    def formula(x_shape, *args, out_shape=None, **kwargs) -> int:
        return k * _numel(x_shape)
    return formula


def _add(*args, out_shape=None, alpha=1, **kwargs) -> int:
    return (1 if alpha == 1 else 2) * _numel(out_shape)


def _addmm(bias_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    return fc.addmm_flop(bias_shape, a_shape, b_shape) + _numel(out_shape)


def _gelu(x_shape, *args, approximate="none", out_shape=None, **kwargs) -> int:
    return (9 if approximate == "tanh" else 5) * _numel(x_shape)


def _gelu_backward(grad_shape, x_shape, *args, approximate="none", out_shape=None, **kwargs) -> int:
    return (18 if approximate == "tanh" else 11) * _numel(x_shape)


def _layer_norm(x_shape, normalized_shape, weight, bias, *args, out_shape=None, **kwargs) -> int:
    return (5 + (weight is not None) + (bias is not None)) * _numel(x_shape)


def _layer_norm_backward(grad_shape, x_shape, normalized_shape, mean, rstd, weight, bias, output_mask,
                         *args, out_shape=None, **kwargs) -> int:
    n = _numel(x_shape)
    return n * (10 * bool(output_mask[0]) + 2 * bool(output_mask[1] and weight is not None)
                + bool(output_mask[2] and bias is not None))


def _dropout(x_shape, p, train, *args, out_shape=None, **kwargs) -> int:
    return 2 * _numel(x_shape) if train and p > 0 else 0


def _embedding_backward(grad_shape, *args, out_shape=None, **kwargs) -> int:
    return _numel(grad_shape)


def _nll(x_shape, *args, out_shape=None, **kwargs) -> int:
    return x_shape[0] if len(x_shape) > 1 else 1


def _nll_backward(grad_shape, x_shape, *args, out_shape=None, **kwargs) -> int:
    return x_shape[0] if len(x_shape) > 1 else 1


# -- attention --------------------------------------------------------------
def attention_forward_flops(q: Shape, k: Shape, v: Shape, masked: bool, dropout_p: float) -> int:
    """Products (torch's count) + scaling of q and k + mask + softmax + dropout."""
    b, h, s_q, d = q
    s_k = k[2]
    scores = b * h * s_q * s_k
    elementwise = scores * (5 + masked + 2 * (dropout_p > 0)) + b * h * (s_q + s_k) * d
    return fc.sdpa_flop_count(q, k, v) + elementwise


def attention_backward_flops(q: Shape, k: Shape, v: Shape, dropout_p: float) -> int:
    """The 4 gradient products (no recomputation) + softmax, dropout and scaling backward."""
    b, h, s_q, d = q
    s_k, d_v = k[2], v[3]
    products = 2 * b * h * s_q * s_k * (2 * d_v + 2 * d)  # dV, dP; dQ, dK
    scores = b * h * s_q * s_k
    return products + scores * (4 + (dropout_p > 0)) + b * h * (s_q + s_k) * d


def _cpu_flash(q, k, v, dropout_p=0.0, is_causal=False, *args, attn_mask=None, out_shape=None, **kwargs) -> int:
    return attention_forward_flops(q, k, v, attn_mask is not None, dropout_p)


def _cpu_flash_backward(grad, q, k, v, out, lse, dropout_p=0.0, *args, out_shape=None, **kwargs) -> int:
    return attention_backward_flops(q, k, v, dropout_p)


def _cuda_flash(q, k, v, dropout_p=0.0, *args, out_shape=None, **kwargs) -> int:
    return attention_forward_flops(q, k, v, False, dropout_p)


def _cuda_flash_backward(grad, q, k, v, out, lse, cq, ck, mq, mk, dropout_p=0.0, *args, out_shape=None,
                         **kwargs) -> int:
    return attention_backward_flops(q, k, v, dropout_p)


def _biased(q, k, v, attn_bias, compute_lse=False, dropout_p=0.0, *args, out_shape=None, **kwargs) -> int:
    return attention_forward_flops(q, k, v, attn_bias is not None, dropout_p)


def _efficient_backward(grad, q, k, v, attn_bias, out, lse, seed, offset, dropout_p=0.0, *args,
                        out_shape=None, **kwargs) -> int:
    return attention_backward_flops(q, k, v, dropout_p)


def _cudnn_backward(grad, q, k, v, out, lse, seed, offset, attn_bias, cq, ck, mq, mk, dropout_p=0.0, *args,
                    out_shape=None, **kwargs) -> int:
    return attention_backward_flops(q, k, v, dropout_p)


def _packets(*names: str) -> list:
    """The aten op packets of these names that this torch build has."""
    return [getattr(_aten, n) for n in names if hasattr(_aten, n)]


def _build() -> dict:
    table: dict = {}

    def put(names: tuple[str, ...], formula: Callable[..., int]) -> None:
        for packet in _packets(*names):
            table[packet] = formula

    put(("add", "add_", "sub", "sub_", "rsub"), _add)
    put(("mul", "mul_", "div", "div_", "neg", "neg_", "reciprocal", "reciprocal_", "pow", "pow_", "exp", "exp_",
         "log", "log_", "sqrt", "sqrt_", "rsqrt", "rsqrt_", "erf", "erf_", "tanh", "tanh_", "relu", "relu_",
         "threshold_backward", "clamp", "clamp_", "maximum", "minimum"), _per_out(1))
    put(("addcmul", "addcmul_", "addcdiv", "addcdiv_", "lerp", "lerp_"), _per_out(3))
    put(("sum", "mean"), _per_in(1))
    put(("sigmoid", "sigmoid_"), _per_out(4))
    put(("silu", "silu_"), _per_out(5))
    put(("tanh_backward", "sigmoid_backward"), _per_out(3))
    put(("silu_backward",), _per_out(9))
    put(("gelu", "gelu_"), _gelu)
    put(("gelu_backward",), _gelu_backward)
    put(("_softmax", "_safe_softmax", "_log_softmax"), _per_out(5))
    put(("_softmax_backward_data", "_log_softmax_backward_data"), _per_out(4))
    put(("native_layer_norm",), _layer_norm)
    put(("native_layer_norm_backward",), _layer_norm_backward)
    put(("native_dropout",), _dropout)
    put(("native_dropout_backward",), _per_out(2))
    put(("embedding_dense_backward",), _embedding_backward)
    put(("nll_loss_forward",), _nll)
    put(("nll_loss_backward",), _nll_backward)
    put(("addmm",), _addmm)
    put(("_scaled_dot_product_flash_attention_for_cpu",), _cpu_flash)
    put(("_scaled_dot_product_flash_attention_for_cpu_backward",), _cpu_flash_backward)
    put(("_scaled_dot_product_flash_attention",), _cuda_flash)
    put(("_scaled_dot_product_flash_attention_backward",), _cuda_flash_backward)
    put(("_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention"), _biased)
    put(("_scaled_dot_product_efficient_attention_backward",), _efficient_backward)
    put(("_scaled_dot_product_cudnn_attention_backward",), _cudnn_backward)
    return table


FORMULAS: dict = _build()


# -- the optimizer step -----------------------------------------------------
def optimizer_step_flops(optimizer: torch.optim.Optimizer) -> int:
    """FLOPs of one `optimizer.step()` over the parameters that have a gradient now."""
    total = 0
    for group in optimizer.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        n = sum(p.numel() for p in params)
        total += per_element_step_flops(optimizer, group) * n
        if isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
            total += len(params)  # each parameter's step counter
    return total


def per_element_step_flops(optimizer: torch.optim.Optimizer, group: dict) -> int:
    """The element-wise cost of one step for one parameter group."""
    wd = group.get("weight_decay", 0) != 0
    if isinstance(optimizer, torch.optim.AdamW) or (isinstance(optimizer, torch.optim.Adam)
                                                    and group.get("decoupled_weight_decay")):
        # p *= 1 - lr wd; m.lerp_(g); v = v b2 + (1-b2) g^2; denom = sqrt(v)/c + eps; p -= s m / denom
        return 13 + wd + group.get("amsgrad", False)
    if isinstance(optimizer, torch.optim.Adam):
        return 13 + 2 * wd + group.get("amsgrad", False)  # g + wd p
    if isinstance(optimizer, torch.optim.SGD):
        # g + wd p; buf = buf m + (1 - dampening) g; g + m buf (Nesterov); p -= lr g
        if group.get("momentum", 0) == 0:
            return 2 + 2 * wd
        return 2 + 2 * wd + 2 + (group.get("dampening", 0) != 0) + 2 * bool(group.get("nesterov", False))
    raise NotImplementedError(f"no FLOP formula for optimizer {type(optimizer).__name__}: "
                              "add one to fedmpi/metering/formulas.py")
