"""CATS task scaling: primal-dual updates of per-task gradient scales from a Gram matrix.

Pure torch, float64, CPU, deterministic: every data-parallel rank that feeds the
same (all-reduced) inputs computes bit-identical scales. No DeepSpeed, no
process group.

Formulation (docs/design.md, "2. The scaler"), with
N tasks, scales s = N * alpha and alpha on the floored simplex
{sum alpha = 1, alpha_n >= alpha_min}:

    minimize_alpha f(alpha)  subject to  c(alpha) = s^T G s / eps - 1 <= 0
    grad_alpha c = 2 N (G s) / eps
    alpha  <- Proj(alpha - lr_alpha * (grad f + lambda * grad_alpha c))
    lambda <- max(0, lambda + lr_lambda * c(alpha_new))

Objectives: ``lookahead`` f = -(d^T s)/eps with d = meta_dots (None: d = G 1),
grad f = -N d / eps; ``second_order`` f = (-d^T s + eta/2 s^T M s)/eps with M[n, m] =
g_n^T H_dev g_m (the dev loss's Hessian between task gradients, ``curvature``) and
eta = second_order_lr, grad f = N (-d + eta M s) / eps; ``weighted_loss`` grad f = L / mean(L);
``robust`` grad f = -L / mean(L).

Meta signal. With ``meta_ema`` > 0 the primal-dual step sees exponential moving averages
(decay meta_ema, over the calls that bring them) of the meta losses, the meta dots and M
instead of the step's own values; 0 uses each step's values as they are.

Parameterizations. ``scales`` (above): s = N alpha multiplies the share-weighted task
gradients g_n = (T_n / T_B) gbar_n, so a task's weight in the update moves only by the factor
s_n. ``weights``: w = alpha acts on the per-task *mean* gradients gbar_n = g_n / pi_n (pi_n the
step's realized target-token share), the update is sum_n w_n gbar_n, and w can go anywhere on
the floored simplex, from the T=1 mixture to uniform and beyond. The caller passes the mean
gradients' statistics, Gbar = D^-1 G D^-1 and dbar = D^-1 d with D = diag(pi), and ``plain``
= pi (the weights of plain training); the same primal-dual step then runs with s = w (gain 1
instead of N), and the caller turns w into the partition's scales s_n = w_n / pi_n
(cats_ds/cats/statistics.py). w starts at the sampling distribution, projected onto the
floored simplex; w = pi is plain training exactly. ``softmax``: the same weights on the mean
gradients as w = softmax(theta) (no floor: alpha_min must be 0); the step moves the logits,
theta <- theta - lr_alpha J^T (grad f + lambda grad c) with J = diag(w) - w w^T the softmax's
Jacobian, starting at theta = log(pi).

Multiplier. ``monotone_lambda``: lambda never decreases, lambda <- lambda + lr_lambda max(0, c)
(the MGDA-like reading of the paper; docs/cats.md, "Variants").

A task is *absent* from a step when its gradient is exactly zero, i.e.
G[n, n] == 0 (its Gram row and column are then zero). The step has no
information about an absent task, so its alpha is frozen: only the present
tasks' alphas move, projected onto the floored simplex with the mass they hold
together (``softmax``: an absent task's logit stays; its weight follows the
normalization). Without the freeze the literal formula would shift weight away
from every task that was merely not sampled (its gradient entries are 0 while the
others' are negative under ``lookahead``), which penalises rarely sampled,
i.e. low-resource, tasks. Losses of absent tasks are ignored and may be NaN.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from cats_ds.cats.variants import check_variant

logger = logging.getLogger(__name__)

EPSILON_MODES = ("relative", "absolute")
PARAMETERIZATIONS = ("scales", "weights", "softmax")
MEAN_GRADIENT_PARAMETERIZATIONS = ("weights", "softmax")   # w acts on the per-task mean gradients
METHODS = ("cats", "pcgrad", "mgda")
OBJECTIVES = ("lookahead", "second_order", "weighted_loss", "robust")
META_SOURCES = ("dev", "train")
GRAM_MODES = ("full", "diagonal")
BUFFER_DTYPES = ("fp32", "bf16", "fp16")

# Slack allowed when checking that a floor or a loaded alpha is feasible:
# sums of float64 alphas drift by a few ulps.
_FEASIBILITY_TOL = 1e-9

ArrayLike = torch.Tensor | Sequence[float]


def _config_error(key: str, value: Any, requirement: str) -> ValueError:
    return ValueError(f"cats.{key} must be {requirement}, got {value!r}")


def _check_real(key: str, value: Any, low: float, high: float, *, low_open: bool = False,
                high_open: bool = False) -> None:
    """Raise unless value is a finite real number in the interval [low, high] (ends as given)."""
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    requirement = f"a finite number in {left}{low}, {high}{right}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _config_error(key, value, requirement)
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if below or above:
        raise _config_error(key, value, requirement)


def _check_int(key: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _config_error(key, value, f"an integer >= {low}")


def _check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise _config_error(key, value, f"one of {choices}")


@dataclass
class CATSConfig:
    """Settings of the CATS task scaler.

    Defaults, and why:

    - ``lr_alpha = 0.01``: f and c are normalized by eps, so their gradients
      are O(1) per task and alpha moves about lr_alpha * (spread of the
      gradient entries) per update: 0.1 to 1 of probability mass within 100
      updates, clearly visible for N up to a few tens. Stability of the
      constraint term needs roughly lr_alpha * lambda * 2N * (largest
      eigenvalue of G / eps) < 2; for uncorrelated tasks that is
      lr_alpha < 1 / (lambda * N), so lower lr_alpha for N >> 50.
    - ``lr_lambda = 0.1``: c is a relative excess (c = 0.1 means 10% sharper
      than allowed), so lambda reaches O(1), where lambda * grad c balances
      grad f, within tens of violating updates.
    - ``epsilon = 1.0`` with ``epsilon_mode = "relative"``: eps = rho * EMA of
      1^T G 1, so at rho = 1 the rescaled update may be no sharper than plain
      training's. ``epsilon`` is rho in relative mode and the fixed eps (in
      squared-gradient-norm units) in absolute mode.
    - ``ema_decay = 0.9``: averages about 10 steps of 1^T G 1, smoothing
      batch noise while following the gradient norm as training shrinks it.
    - ``alpha_min = 0.0``: valid for every N (it must lie in [0, 1/N], checked
      by TaskScaler); set e.g. 0.1/N to keep every task trained.
    - ``warmup_steps = 0``, ``interval = 1``: update at every step; raise
      interval to amortize the dev-batch cost of ``lookahead``.
    - ``objective = "lookahead"`` with ``meta_source = "dev"``: with
      training-batch meta gradients the lookahead optimum is s = 1 (no-op).
    - ``parameterization = "scales"``: the measured default so far; ``weights``
      gives CATS authority over the mixture (module docstring).
    - ``meta_ema = 0.0``: each update follows its own step's dev statistics
      (the behaviour before the option existed); docs/design.md reports what
      smoothing does to the weights' stability.
    - ``second_order_lr = 1.0`` (eta): the step length of the second-order
      model, L(theta - eta g_hat); eta -> 0 turns ``second_order`` into
      ``lookahead``. ``curvature_every = 1``: M is recomputed on every
      update (2N extra dev passes each); it must be a multiple of
      ``interval``, and between recomputations the last M is used.
      ``curvature_step = 1e-3``: the finite-difference perturbation's norm
      relative to the parameters' (cats_ds/cats/hessian.py).
    - ``monotone_lambda = False``: lambda also decreases when the constraint
      holds, the standard dual ascent; True is the MGDA-like reading.
    - ``variant = "custom"``: no named variant; a name sets several of these
      keys at once (cats_ds/cats/variants.py), applied by cats_ds.config.

    ``meta_source`` (where meta losses and the meta gradient h come from),
    ``cosine_every`` (how often the trainer logs the cosine matrix),
    ``buffer_dtype`` (dtype of the per-task partition buffers: fp32, bf16 or
    fp16), ``meta_tokens_per_task`` (source+target tokens of each task's dev
    batch, all ranks together) and ``enabled`` are read by the trainer; a
    disabled TaskScaler keeps s = 1. ``method`` picks what turns the per-task
    Gram matrix into scales: ``cats`` (this TaskScaler) or a gradient-surgery
    baseline, ``pcgrad`` or ``mgda`` (cats_ds.cats.surgery), which ignore the
    CATS knobs.
    """

    enabled: bool = True              # false: plain training, every task's scale stays 1
    method: str = "cats"              # cats, or the gradient-surgery baselines pcgrad or mgda
    lr_alpha: float = 0.01            # step size of the task weights alpha
    lr_lambda: float = 0.1            # step size of the curvature multiplier lambda
    epsilon: float = 1.0              # curvature budget: rho (relative) or eps (absolute)
    epsilon_mode: str = "relative"    # relative (eps = epsilon * EMA of 1^T G 1) or absolute
    ema_decay: float = 0.9            # decay of the EMA of 1^T G 1 used by relative epsilon
    alpha_min: float = 0.0            # floor on each task weight alpha; at most 1 / number of tasks
    warmup_steps: int = 0             # steps before the first CATS update
    interval: int = 1                 # update the scales every k steps
    objective: str = "lookahead"      # lookahead, second_order, weighted_loss or robust
    meta_source: str = "dev"          # where meta losses and gradients come from: dev or train batches
    gram: str = "full"                # full task Gram matrix or its diagonal
    cosine_every: int = 10            # log the task-gradient cosine matrix every k steps
    buffer_dtype: str = "fp32"        # dtype of the per-task gradient buffers: fp32, bf16 or fp16
    meta_tokens_per_task: int = 1000  # source+target tokens of each task's dev batch, all ranks together
    parameterization: str = "scales"  # scales (s = N alpha), weights (w = alpha on mean gradients) or softmax
    meta_ema: float = 0.0             # decay of the moving average of the meta statistics over updates; 0: none
    second_order_lr: float = 1.0      # second_order: the step length eta of the quadratic model's term eta/2 s^T M s
    curvature_every: int = 1          # second_order: recompute M every k steps (a multiple of interval)
    curvature_step: float = 1e-3      # second_order: finite-difference step, relative to (1 + |theta|) / |g_n|
    monotone_lambda: bool = False     # the multiplier lambda never decreases: lambda += lr_lambda * max(c, 0)
    variant: str = "custom"           # a named set of these keys (cats_ds/cats/variants.py); custom: the keys as set

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise _config_error("enabled", self.enabled, "a bool")
        _check_choice("method", self.method, METHODS)
        _check_real("lr_alpha", self.lr_alpha, 0.0, math.inf)
        _check_real("lr_lambda", self.lr_lambda, 0.0, math.inf)
        _check_real("epsilon", self.epsilon, 0.0, math.inf, low_open=True)
        _check_choice("epsilon_mode", self.epsilon_mode, EPSILON_MODES)
        _check_real("ema_decay", self.ema_decay, 0.0, 1.0, high_open=True)
        _check_real("alpha_min", self.alpha_min, 0.0, 1.0)
        _check_int("warmup_steps", self.warmup_steps, 0)
        _check_int("interval", self.interval, 1)
        _check_choice("objective", self.objective, OBJECTIVES)
        _check_choice("meta_source", self.meta_source, META_SOURCES)
        _check_choice("buffer_dtype", self.buffer_dtype, BUFFER_DTYPES)
        _check_int("meta_tokens_per_task", self.meta_tokens_per_task, 1)
        _check_choice("gram", self.gram, GRAM_MODES)
        _check_int("cosine_every", self.cosine_every, 1)
        _check_real("meta_ema", self.meta_ema, 0.0, 1.0, high_open=True)
        if not isinstance(self.monotone_lambda, bool):
            raise _config_error("monotone_lambda", self.monotone_lambda, "a bool")
        check_variant(self.variant)
        self._check_parameterization()
        self._check_curvature()

    def _check_parameterization(self) -> None:
        _check_choice("parameterization", self.parameterization, PARAMETERIZATIONS)
        if self.parameterization != "scales" and self.method != "cats":
            raise _config_error("parameterization", self.parameterization,
                                f"'scales' with method {self.method!r} (weights are a CATS parameterization)")
        if self.parameterization == "softmax" and self.alpha_min != 0.0:
            raise _config_error("alpha_min", self.alpha_min,
                                "0 with parameterization 'softmax' (softmax weights are positive, with no floor)")

    def _check_curvature(self) -> None:
        _check_real("second_order_lr", self.second_order_lr, 0.0, math.inf, low_open=True)
        _check_int("curvature_every", self.curvature_every, 1)
        _check_real("curvature_step", self.curvature_step, 0.0, 1.0, low_open=True)
        if self.objective == "second_order" and self.curvature_every % self.interval:   # M only on update steps
            raise _config_error("curvature_every", self.curvature_every,
                                f"a multiple of cats.interval={self.interval} (M is computed on update steps)")
        if self.objective == "second_order" and self.meta_source != "dev":
            raise _config_error("objective", self.objective,
                                "'lookahead' or a loss objective with cats.meta_source=train (the curvature "
                                "term is the Hessian of the dev loss)")


def project_floored_simplex(v: ArrayLike, floor: float, mass: float = 1.0) -> torch.Tensor:
    """Euclidean projection of v onto {x : sum x = mass, x_i >= floor}, as float64.

    Shifts by the floor and projects onto the simplex of mass
    ``mass - len(v) * floor`` with the sort-based algorithm (Held et al. 1974;
    Duchi et al. 2008): x = max(v - floor - theta, 0) + floor for the unique
    threshold theta that gives the right mass.
    """
    values = torch.as_tensor(v, dtype=torch.float64).detach().cpu()
    if values.dim() != 1 or values.numel() == 0:
        raise ValueError(f"project_floored_simplex: v must be a non-empty 1-D vector, got shape {tuple(values.shape)}")
    if not bool(torch.isfinite(values).all()):
        raise ValueError("project_floored_simplex: v contains non-finite values")
    if not (math.isfinite(floor) and floor >= 0.0):
        raise ValueError(f"project_floored_simplex: floor must be finite and >= 0, got {floor!r}")
    free_mass = mass - values.numel() * floor
    if not math.isfinite(mass) or free_mass < -_FEASIBILITY_TOL:
        raise ValueError(f"project_floored_simplex: mass {mass!r} is below len(v) * floor = {values.numel() * floor!r}")
    if free_mass <= 0.0:
        return torch.full_like(values, floor)
    shifted = values - floor
    descending = torch.sort(shifted, descending=True).values
    excess = torch.cumsum(descending, dim=0) - free_mass
    ranks = torch.arange(1, values.numel() + 1, dtype=torch.float64)
    # The support size is the largest k whose k-th largest entry stays positive
    # after subtracting the threshold that the top k entries would need. k = 1
    # always qualifies (its margin is the free mass), also when rounding hides it.
    qualifies = descending - excess / ranks > 0
    qualifies[0] = True
    support = int(qualifies.nonzero().max()) + 1
    theta = excess[support - 1] / support
    return torch.clamp(shifted - theta, min=0.0) + floor


def _as_float64(name: str, value: ArrayLike, shape: tuple[int, ...]) -> torch.Tensor:
    tensor = torch.as_tensor(value).detach().to(device="cpu", dtype=torch.float64)
    if tuple(tensor.shape) != shape:
        raise ValueError(f"TaskScaler.update: {name} must have shape {shape}, got {tuple(tensor.shape)}")
    return tensor


def _require_finite(**tensors: torch.Tensor | None) -> None:
    for name, tensor in tensors.items():
        if tensor is not None and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"TaskScaler.update: {name} is non-finite ({tensor.tolist()}); skip the step instead "
                             "(cats_ds/nonfinite.py)")


def _optional_float(value: float | None) -> float:
    return math.nan if value is None else value


_META_KEYS = ("losses", "dots", "curvature")   # the meta statistics TaskScaler averages (meta_ema)


def _masked_ema(average: torch.Tensor | None, value: torch.Tensor, mask: torch.Tensor, decay: float) -> torch.Tensor:
    """decay * average + (1 - decay) * value where ``mask`` holds; elsewhere the average stays.
    The first value (and an entry first seen now) is taken as it is: no zero-initialization bias."""
    if average is None:
        return value.clone()
    blended = torch.where(torch.isnan(average), value, decay * average + (1.0 - decay) * value)
    return torch.where(mask, blended, average)


def check_alpha_min(alpha_min: float, num_tasks: int) -> None:
    """The floor must leave the simplex non-empty: alpha_min * num_tasks <= 1."""
    if alpha_min * num_tasks > 1.0 + _FEASIBILITY_TOL:
        raise ValueError(f"cats.alpha_min must be in [0, 1/num_tasks] = [0, {1.0 / num_tasks}] with {num_tasks} "
                         f"tasks, got {alpha_min!r}")


class TaskScaler:
    """Holds alpha and lambda for N tasks and updates them from per-step Gram matrices.

    ``update`` returns the scales s = N * alpha (parameterization ``weights`` or
    ``softmax``: the weights w = alpha) as a float64 CPU tensor (a fresh copy; callers
    convert to their dtype and device). ``initial``: the starting alpha
    (default uniform), projected onto the floored simplex.
    """

    def __init__(self, config: CATSConfig, num_tasks: int, initial: ArrayLike | None = None) -> None:
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"TaskScaler: num_tasks must be an integer >= 1, got {num_tasks!r}")
        check_alpha_min(config.alpha_min, num_tasks)
        self.config = config
        self.num_tasks = num_tasks
        self._gain = float(num_tasks) if config.parameterization == "scales" else 1.0   # s = gain * alpha
        self._alpha = torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64)
        if initial is not None:
            start = _as_float64("initial", initial, (num_tasks,))
            self._alpha = project_floored_simplex(start / start.sum(), config.alpha_min)
        # softmax: the logits theta the steps move, alpha = softmax(theta); None for the other parameterizations
        self._theta = self._alpha.log() if config.parameterization == "softmax" else None
        self._lam = 0.0
        self._ema_plain_sq_norm: float | None = None  # EMA of 1^T G 1
        self._step = 0  # number of update() calls
        self._num_updates = 0  # primal-dual steps applied
        self._num_skipped = 0  # due updates skipped (eps or the mean loss not positive, no task present)
        self._last_eps: float | None = None
        self._last_constraint: float | None = None  # c at the alpha the last step produced
        self._last_update_sq_norm: float | None = None  # s^T G s at that alpha: the update's squared norm
        self._meta: dict[str, torch.Tensor | None] = dict.fromkeys(_META_KEYS)   # meta_ema averages; M

    @property
    def scales(self) -> torch.Tensor:
        return self._gain * self._alpha

    @property
    def alpha(self) -> torch.Tensor:
        return self._alpha.clone()

    @property
    def lam(self) -> float:
        return self._lam

    @property
    def step(self) -> int:
        return self._step

    @property
    def num_updates(self) -> int:
        return self._num_updates

    @property
    def num_skipped(self) -> int:
        return self._num_skipped

    @property
    def eps(self) -> float | None:
        """The eps the next primal-dual step would use if 1^T G 1 did not change; None before any input."""
        if self.config.epsilon_mode == "absolute":
            return float(self.config.epsilon)
        if self._ema_plain_sq_norm is None:
            return None
        return self.config.epsilon * self._ema_plain_sq_norm

    @property
    def last_constraint(self) -> float | None:
        return self._last_constraint

    @property
    def last_update_sq_norm(self) -> float | None:
        return self._last_update_sq_norm

    def update_due(self) -> bool:
        """True when the next update() call will run a primal-dual step (so it needs dev meta_dots)."""
        next_step = self._step + 1
        past_warmup = next_step - self.config.warmup_steps
        return self.config.enabled and past_warmup > 0 and past_warmup % self.config.interval == 0

    def curvature_due(self) -> bool:
        """True when the next update() call should bring a fresh curvature matrix M: the first
        primal-dual step and every curvature_every steps after it (``second_order`` only)."""
        past_warmup = self._step + 1 - self.config.warmup_steps
        first = past_warmup - self.config.interval
        return (self.config.objective == "second_order" and self.update_due()
                and first % self.config.curvature_every == 0)

    @property
    def curvature(self) -> torch.Tensor | None:
        """The M the next primal-dual step uses (its meta_ema average); None before the first."""
        return None if self._meta["curvature"] is None else self._meta["curvature"].clone()

    def describe(self) -> dict[str, float]:
        """Scalars for logging; NaN where not yet defined."""
        return {
            "lambda": self._lam,
            "eps": _optional_float(self._last_eps),
            "constraint": _optional_float(self._last_constraint),
            "update_sq_norm": _optional_float(self._last_update_sq_norm),
            "ema_plain_sq_norm": _optional_float(self._ema_plain_sq_norm),
            "steps": float(self._step),
            "updates": float(self._num_updates),
            "skipped": float(self._num_skipped),
        }

    def update(self, losses: ArrayLike, gram: ArrayLike, meta_dots: ArrayLike | None = None,
               plain: ArrayLike | None = None, curvature: ArrayLike | None = None) -> torch.Tensor:
        """Feed one optimizer step's losses [N], Gram matrix [N, N] and meta dots [N]; return scales [N].

        ``plain``: the coefficients of plain training in this parameterization
        (default: s = 1 for ``scales``; ``weights`` passes the realized shares pi).
        ``curvature``: M [N, N] of the same gradients as ``gram`` (``second_order``;
        kept for the steps that bring none, see curvature_due()).
        Every call advances the step counter. Finite inputs update the EMA of
        plain training's squared update norm (1^T G 1 for scales); the
        primal-dual step runs only on steps after warmup_steps that fall on the
        interval. Non-finite inputs (losses of absent tasks excepted) are refused
        with ValueError and change nothing: what a non-finite step means is the
        trainer's decision (cats_ds/nonfinite.py), made before it calls this.
        """
        n = self.num_tasks
        losses64 = _as_float64("losses", losses, (n,))
        gram64 = self._prepare_gram(_as_float64("gram", gram, (n, n)))
        dots64 = None if meta_dots is None else _as_float64("meta_dots", meta_dots, (n,))
        plain64 = torch.ones(n, dtype=torch.float64) if plain is None else _as_float64("plain", plain, (n,))
        present = torch.diagonal(gram64) > 0.0
        curvature64 = None if curvature is None else self._prepare_gram(_as_float64("curvature", curvature, (n, n)))
        _require_finite(gram=gram64, losses=losses64[present], meta_dots=dots64, curvature=curvature64)
        update_due = self.update_due()
        self._step += 1
        if not self.config.enabled:
            return self.scales
        self._update_ema(float(plain64 @ gram64 @ plain64))
        if update_due:
            losses64, dots64 = self._average_meta(losses64, dots64, curvature64, present)
            self._primal_dual_step(losses64, gram64, dots64, present, plain64)
        return self.scales

    def _average_meta(self, losses: torch.Tensor, dots: torch.Tensor | None, curvature: torch.Tensor | None,
                      present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Folds this update's meta statistics into their meta_ema averages and returns the averaged
        losses and dots (M is read by the objective). Entries of absent tasks keep their average."""
        fresh = {"losses": (losses, present), "dots": (dots, present),
                 "curvature": (curvature, present[:, None] & present[None, :])}
        for key, (value, mask) in fresh.items():
            if value is not None:
                self._meta[key] = _masked_ema(self._meta[key], value, mask, self.config.meta_ema)
        dots = None if dots is None else self._meta["dots"]
        return self._meta["losses"], dots

    def _prepare_gram(self, gram: torch.Tensor) -> torch.Tensor:
        # The partial Grams summed over ranks are symmetric only up to rounding;
        # grad c = 2N G s assumes symmetry.
        symmetric = 0.5 * (gram + gram.T)
        if self.config.gram == "diagonal":
            return torch.diag(torch.diagonal(symmetric))
        return symmetric

    def _update_ema(self, plain_sq_norm: float) -> None:
        if self._ema_plain_sq_norm is None:
            self._ema_plain_sq_norm = plain_sq_norm  # no zero-initialization bias
            return
        decay = self.config.ema_decay
        self._ema_plain_sq_norm = decay * self._ema_plain_sq_norm + (1.0 - decay) * plain_sq_norm

    def _skip(self, reason: str) -> torch.Tensor:
        self._num_skipped += 1
        logger.warning("CATS step %d skipped: %s; alpha and lambda unchanged (%d skipped so far)",
                       self._step, reason, self._num_skipped)
        return self.scales

    def _objective_grad(self, losses: torch.Tensor, gram: torch.Tensor, meta_dots: torch.Tensor | None,
                        eps: float, present: torch.Tensor, plain: torch.Tensor) -> torch.Tensor | None:
        """grad_alpha f on the present tasks (zero elsewhere); None when mean(L) <= 0."""
        n = self.num_tasks
        if self.config.objective == "lookahead":
            dots = gram @ plain if meta_dots is None else meta_dots
            return -self._gain * dots / eps
        if self.config.objective == "second_order":
            curvature = self._meta["curvature"]
            if meta_dots is None or curvature is None:
                return None
            return self._gain * (-meta_dots + self.config.second_order_lr * (curvature @ self.scales)) / eps
        grad = torch.zeros(n, dtype=torch.float64)
        mean_loss = float(losses[present].mean())
        if not mean_loss > 0.0:
            return None
        sign = 1.0 if self.config.objective == "weighted_loss" else -1.0
        grad[present] = sign * losses[present] / mean_loss
        return grad

    def _primal_dual_step(self, losses: torch.Tensor, gram: torch.Tensor, meta_dots: torch.Tensor | None,
                          present: torch.Tensor, plain: torch.Tensor) -> None:
        eps = self.eps
        if eps is None or not eps > 0.0:
            self._skip(f"eps = {eps!r} is not positive")
            return
        if not bool(present.any()):
            self._skip("no task has a nonzero gradient")
            return
        grad_f = self._objective_grad(losses, gram, meta_dots, eps, present, plain)
        if grad_f is None:
            self._skip("second_order has no meta dots or curvature matrix" if self.config.objective == "second_order"
                       else "the mean loss of the present tasks is not positive")
            return
        grad_c = 2.0 * self._gain * (gram @ self.scales) / eps
        self._primal_step(grad_f + self._lam * grad_c, present)
        # The dual step evaluates c at the NEW alpha (alternating primal-dual):
        # lambda reacts to the scales that will actually be applied.
        new_scales = self.scales
        update_sq_norm = float(new_scales @ gram @ new_scales)
        constraint = update_sq_norm / eps - 1.0
        increment = self.config.lr_lambda * constraint
        self._lam = max(0.0, self._lam + (max(increment, 0.0) if self.config.monotone_lambda else increment))
        self._last_eps, self._last_update_sq_norm, self._last_constraint = eps, update_sq_norm, constraint
        self._num_updates += 1

    def _primal_step(self, grad_alpha: torch.Tensor, present: torch.Tensor) -> None:
        """alpha moves against grad_alpha (grad f + lambda grad c): projected onto the floored simplex,
        or for softmax through its logits, grad_theta = J^T grad_alpha with J = diag(alpha) - alpha alpha^T."""
        if self._theta is not None:
            grad_theta = self._alpha * (grad_alpha - self._alpha @ grad_alpha)
            grad_theta[~present] = 0.0   # absent tasks keep their logit
            self._theta = self._theta - self.config.lr_alpha * grad_theta
            self._alpha = torch.softmax(self._theta, dim=0)
            return
        step_target = self._alpha - self.config.lr_alpha * grad_alpha
        # Absent tasks keep their alpha; present ones share the mass they hold.
        new_alpha = self._alpha.clone()
        present_mass = 1.0 - float(self._alpha[~present].sum())
        new_alpha[present] = project_floored_simplex(step_target[present], self.config.alpha_min, present_mass)
        self._alpha = new_alpha

    def state_dict(self) -> dict[str, Any]:
        return {
            "num_tasks": self.num_tasks,
            "alpha": self._alpha.clone(),
            "theta": None if self._theta is None else self._theta.clone(),
            "lam": self._lam,
            "ema_plain_sq_norm": self._ema_plain_sq_norm,
            "step": self._step,
            "num_updates": self._num_updates,
            "num_skipped": self._num_skipped,
            "last_eps": self._last_eps,
            "last_constraint": self._last_constraint,
            "last_update_sq_norm": self._last_update_sq_norm,
            **{f"meta_{key}": value for key, value in self._meta.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "last_curvature" in state:   # the name checkpoints written before the rename use
            state = {**state, "last_update_sq_norm": state["last_curvature"]}
        # checkpoints from before meta_ema and second_order hold no averages: start them afresh
        # ... and checkpoints from before softmax no logits: they are log(alpha)
        state = {**{f"meta_{key}": None for key in _META_KEYS}, "theta": None, **state}
        missing = [key for key in self.state_dict() if key not in state]
        if missing:
            raise ValueError(f"TaskScaler.load_state_dict: missing keys {missing}")
        if state["num_tasks"] != self.num_tasks:
            raise ValueError(
                f"TaskScaler.load_state_dict: num_tasks is {state['num_tasks']!r}, this scaler has {self.num_tasks}")
        alpha = torch.as_tensor(state["alpha"]).detach().to(device="cpu", dtype=torch.float64).clone()
        self._check_loaded_alpha(alpha)
        lam = float(state["lam"])
        if not (math.isfinite(lam) and lam >= 0.0):
            raise ValueError(f"TaskScaler.load_state_dict: lam must be finite and >= 0, got {lam!r}")
        self._alpha = alpha
        if self.config.parameterization == "softmax":
            theta = state["theta"]
            self._theta = alpha.log() if theta is None else torch.as_tensor(theta, dtype=torch.float64).clone()
        self._lam = lam
        self._ema_plain_sq_norm = state["ema_plain_sq_norm"]
        self._step = int(state["step"])
        self._num_updates = int(state["num_updates"])
        self._num_skipped = int(state["num_skipped"])
        self._last_eps = state["last_eps"]
        self._last_constraint = state["last_constraint"]
        self._last_update_sq_norm = state["last_update_sq_norm"]
        self._meta = {key: state[f"meta_{key}"] for key in _META_KEYS}

    def _check_loaded_alpha(self, alpha: torch.Tensor) -> None:
        if tuple(alpha.shape) != (self.num_tasks,) or not bool(torch.isfinite(alpha).all()):
            raise ValueError(f"TaskScaler.load_state_dict: alpha must be {self.num_tasks} finite values, "
                             f"got shape {tuple(alpha.shape)}")
        total = float(alpha.sum())
        smallest = float(alpha.min())
        if abs(total - 1.0) > _FEASIBILITY_TOL or smallest < self.config.alpha_min - _FEASIBILITY_TOL:
            raise ValueError(
                f"TaskScaler.load_state_dict: alpha (sum {total}, min {smallest}) is off the simplex with "
                f"floor alpha_min = {self.config.alpha_min}")
