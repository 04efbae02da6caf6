"""Fit the synthetic skew families (Zipf s, Dirichlet alpha, log-normal sigma) to a recorded trace, layer by layer.

Observed curve of a layer: each (step, micro-batch) row's global expert shares (counts summed over source ranks,
normalised), sorted hottest first, averaged over the rows. Model curve of a family at a parameter: the mean over
Monte Carlo draws of the sorted shares that the simulator's generator would produce (`family_shares`: the family's
base shares capped at 1/top_k, then multinomial sampling of the trace's mean row total). Each family's parameter
minimises the squared distance between the two curves: a coarse grid over the whole range, then four finer grids
around the best point, vectorised over layers and candidates.

The draws are common random numbers (fixed by `seed`, the same for every candidate), drawn per cell so that the
objective moves smoothly with the parameter:
- log-normal: exp(sigma * z) with fixed z, exactly as `family_shares`;
- Dirichlet: Gamma(alpha) draws by Marsaglia-Tsang with each cell's own fixed proposals, and the boost
  G(a) = G(a+1) U^(1/a) for a < 1 (exact in law; numpy's sampler would shift the stream at every rejection);
- multinomial sampling: its Gaussian limit with the exact covariance n(diag p - p p^T), clipped at zero.
A test checks the model curves against `family_shares` + `Generator.multinomial` directly.

Bounds (checked by check_fit_size from the trace's sizes before anything sized by them is allocated; the error
names the trace's file):
- MAX_FIT_RANDOM_BYTES: the common random numbers (draws x experts x _RANDOM_BYTES_PER_CELL = 152 bytes) are the one
  array the fit holds whole: 512 MiB admits 13,797 experts at the default 256 draws (a fit of that one layer peaks
  at ~0.8 GiB and takes ~20 s).
- MAX_FIT_MODEL_SHARES: layers x draws x experts, the model shares computed per candidate parameter, bounds the
  fit's time (~3 us per model share on one core over the 147 candidates of the three families: 2**27 take ~7 min;
  DeepSeek-V3's 58 layers x 256 experts need 3.8 M).
Everything else is computed in chunks of at most _CHUNK_ELEMENTS values (or one candidate's draws x experts, which
the first bound caps), and the observed curves a block of (step, micro-batch) rows at a time, so the fit needs the
trace plus a bounded working set whatever the trace's shape. A MemoryError anyway is one SpecError line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from moesim.routing.generators import cap_shares
from moesim.spec.errors import SpecError
from moesim.spec.routing import LayerSkew, RoutingDistribution, RoutingSpec
from moesim.spec.trace import RoutingTrace

ZIPF, DIRICHLET, LOGNORMAL = RoutingDistribution.ZIPF, RoutingDistribution.DIRICHLET, RoutingDistribution.LOGNORMAL
FAMILIES = (ZIPF, DIRICHLET, LOGNORMAL)
PARAM_NAME = {ZIPF: "s", DIRICHLET: "alpha", LOGNORMAL: "sigma"}
SEARCH_RANGE = {ZIPF: (0.0, 4.0), DIRICHLET: (0.01, 1000.0), LOGNORMAL: (0.0, 5.0)}  # Dirichlet searched in log10
DRAWS = 256  # Monte Carlo draws per model curve (64 leaves a seed-to-seed spread of ~5 % in alpha and sigma)
_GRID_POINTS, _REFINE_POINTS, _REFINE_ROUNDS = 21, 7, 4  # final resolution: range / 20 / 3**4
_CHUNK_ELEMENTS = 1 << 23  # layers are searched in chunks of at most this many (layer, candidate, draw, expert)
_GAMMA_PROPOSALS = 8  # Marsaglia-Tsang accepts >= 95 % for shape >= 1: all 8 rejected has p < 1e-10
# normal, boost_log_u and sampling, plus gamma_x and gamma_log_u per proposal, all float64: 152 bytes per cell
_RANDOM_BYTES_PER_CELL = (3 + 2 * _GAMMA_PROPOSALS) * np.dtype(np.float64).itemsize
MAX_FIT_RANDOM_BYTES = 2**29  # the common random numbers held whole (draws x experts cells): 512 MiB
MAX_FIT_MODEL_SHARES = 2**27  # layers x draws x experts: the work per candidate parameter (time, not memory)
_OBSERVED_CHUNK_ELEMENTS = 1 << 22  # (row, expert) shares of one layer sorted at a time by observed_curves


@dataclass(frozen=True)
class FamilyFit:
    """One family's best parameter for one layer. rmse: between the observed and the model mean sorted-share
    curves, in shares (multiply by num_experts for units of the mean share)."""

    distribution: RoutingDistribution
    param: float
    rmse: float
    max_over_mean_observed: float
    max_over_mean_model: float


@dataclass(frozen=True)
class LayerFit:
    layer: int
    fits: tuple[FamilyFit, ...]  # zipf, dirichlet, lognormal
    best: FamilyFit  # the lowest rmse

    def fit_of(self, family: RoutingDistribution) -> FamilyFit:
        for fit in self.fits:
            if fit.distribution is family:
                return fit
        raise SpecError("family", getattr(family, "value", family), "zipf, dirichlet or lognormal")


@dataclass(frozen=True)
class FitReport:
    layers: tuple[LayerFit, ...]
    num_experts: int
    top_k: int
    source: str
    rows_per_layer: int = 0  # (step, micro-batch) rows averaged into each observed curve
    assignments_per_row: float = 0.0  # mean row total (tokens * top_k over all sources): the sampling noise used
    draws: int = DRAWS

    def to_routing_spec(self, family: RoutingDistribution | None = None, **routing_kwargs) -> RoutingSpec:
        """A RoutingSpec with one LayerSkew per layer: each layer's best family, or `family` for all of them."""
        per_layer = tuple(LayerSkew(fit.distribution, fit.param)
                          for fit in (lf.best if family is None else lf.fit_of(family) for lf in self.layers))
        routing_kwargs.setdefault("trace_ref", f"fit of {self.source}")
        # The scalar zipf_s / dirichlet_alpha / lognormal_sigma stay at their defaults: per_layer overrides them.
        return RoutingSpec(distribution=per_layer[0].distribution, per_layer=per_layer, **routing_kwargs)

    def to_table(self) -> pd.DataFrame:
        """One row per layer x family."""
        rows = [{"layer": lf.layer, "family": f.distribution.value, "param_name": PARAM_NAME[f.distribution],
                 "param": f.param, "rmse": f.rmse, "rmse_over_mean_share": f.rmse * self.num_experts,
                 "max_over_mean_observed": f.max_over_mean_observed, "max_over_mean_model": f.max_over_mean_model,
                 "best": f is lf.best} for lf in self.layers for f in lf.fits]
        return pd.DataFrame(rows)

    def format(self) -> str:
        """A compact human table: per layer the observed max/mean, each family's parameter and rmse, the best."""
        e = self.num_experts
        lines = [f"routing fit of {self.source}",
                 f"E={e} top_k={self.top_k}; {self.rows_per_layer} (step, micro-batch) rows per layer, "
                 f"{self.assignments_per_row:.0f} assignments per row, {self.draws} model draws; "
                 "rmse in units of the mean share (1/E)",
                 f"{'layer':>5} {'obs max/mean':>12} | {'zipf s':>8} {'rmse':>6} | {'dir alpha':>10} {'rmse':>6} | "
                 f"{'logn sigma':>11} {'rmse':>6} | best (model max/mean)"]
        for lf in self.layers:
            z, d, g = (lf.fit_of(f) for f in FAMILIES)
            lines.append(f"{lf.layer:>5} {lf.best.max_over_mean_observed:>12.2f} | "
                         f"{_mark(z, '7.3f')} {z.rmse * e:>6.3f} | {_mark(d, '9.4g')} {d.rmse * e:>6.3f} | "
                         f"{_mark(g, '10.3f')} {g.rmse * e:>6.3f} | "
                         f"{lf.best.distribution.value} ({lf.best.max_over_mean_model:.2f})")
        lines.append(self._overall())
        return "\n".join(lines)

    def _overall(self) -> str:
        e = self.num_experts
        wins = {f: sum(lf.best.distribution is f for lf in self.layers) for f in FAMILIES}
        obs = [lf.best.max_over_mean_observed for lf in self.layers]
        mod = [lf.best.max_over_mean_model for lf in self.layers]
        rmse = [lf.best.rmse * e for lf in self.layers]
        return ("overall: best " + ", ".join(f"{f.value} {n}/{len(self.layers)}" for f, n in wins.items())
                + f"; best rmse median {np.median(rmse):.3f} max {max(rmse):.3f}; max/mean observed "
                f"{min(obs):.2f}-{max(obs):.2f}, model {min(mod):.2f}-{max(mod):.2f}"
                + ("; * = at the end of the search range" if any(at_bound(f) for lf in self.layers for f in lf.fits)
                   else ""))


def at_bound(fit: FamilyFit) -> bool:
    """Whether the fitted parameter sits at an artificial end of its family's search range, so that the optimum
    may lie beyond it (s = 0 and sigma = 0 are natural ends: uniform base shares)."""
    return any(end > 0 and np.isclose(fit.param, end, rtol=1e-9) for end in SEARCH_RANGE[fit.distribution])


def _mark(fit: FamilyFit, spec: str) -> str:
    """The parameter in format `spec` (width first), then '*' when at_bound, else a space."""
    width = int(spec.split(".")[0])
    return format(fit.param, spec[len(str(width)):]).rjust(width) + ("*" if at_bound(fit) else " ")


@dataclass(frozen=True)
class _Draws:
    """Common random numbers of the model curves (D draws of E experts)."""

    normal: np.ndarray  # [D, E] log-normal exponents
    gamma_x: np.ndarray  # [P, D, E] Marsaglia-Tsang proposals
    gamma_log_u: np.ndarray  # [P, D, E] log of their acceptance uniforms
    boost_log_u: np.ndarray  # [D, E] log U of the alpha < 1 boost
    sampling: np.ndarray  # [D, E] standard normals of the multinomial noise


def _draws(seed: int, draws: int, num_experts: int) -> _Draws:
    gen = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)]
    shape = (draws, num_experts)
    return _Draws(normal=gen[0].standard_normal(shape),
                  gamma_x=gen[1].standard_normal((_GAMMA_PROPOSALS, *shape)),
                  gamma_log_u=np.log1p(-gen[1].random((_GAMMA_PROPOSALS, *shape))),
                  boost_log_u=np.log1p(-gen[1].random(shape)),
                  sampling=gen[2].standard_normal(shape))


def _log_gamma(alpha: np.ndarray, rn: _Draws) -> np.ndarray:
    """[..., D, E] log Gamma(alpha, 1) draws: Marsaglia & Tsang (2000), each cell with its own proposals, the
    next proposal only where the previous ones were rejected."""
    a = alpha[..., None, None]
    shape = np.broadcast_shapes(a.shape, rn.normal.shape)
    d = np.broadcast_to(np.where(a < 1, a + 1, a) - 1.0 / 3.0, shape)
    out = _marsaglia_tsang(d, np.broadcast_to(rn.gamma_x[0], shape), np.broadcast_to(rn.gamma_log_u[0], shape))
    for x, log_u in zip(rn.gamma_x[1:], rn.gamma_log_u[1:]):
        todo = np.nonzero(np.isnan(out))
        if not todo[0].size:
            break
        out[todo] = _marsaglia_tsang(d[todo], np.broadcast_to(x, shape)[todo], np.broadcast_to(log_u, shape)[todo])
    out = np.where(np.isnan(out), np.log(d), out)  # every proposal rejected (p < 1e-10): the mode
    return out + np.where(a < 1, rn.boost_log_u / a, 0.0)


def _marsaglia_tsang(d: np.ndarray, x: np.ndarray, log_u: np.ndarray) -> np.ndarray:
    """log(d v) for the accepted proposals x (v = (1 + x / sqrt(9 d))^3), NaN for the rejected ones."""
    v = 1.0 + x / np.sqrt(9.0 * d)
    log_v = 3.0 * np.log(np.where(v > 0, v, 1.0))
    accept = (v > 0) & (log_u < 0.5 * x * x + d - d * np.exp(log_v) + d * log_v)
    return np.where(accept, np.log(d) + log_v, np.nan)


def _base_shares(family: RoutingDistribution, params: np.ndarray, rn: _Draws, num_experts: int,
                 top_k: int) -> np.ndarray:
    """[..., D or 1, E] the generator's capped base shares for each parameter (unsorted for the random families)."""
    if family is ZIPF:
        ranks = np.arange(1, num_experts + 1, dtype=np.float64)
        return cap_shares(ranks ** -params[..., None, None], 1.0 / top_k)
    logits = _log_gamma(params, rn) if family is DIRICHLET else params[..., None, None] * rn.normal
    weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return cap_shares(weights, 1.0 / top_k)


def model_curves(family: RoutingDistribution, params: np.ndarray, totals: np.ndarray, num_experts: int,
                 top_k: int, seed: int = 0, draws: int = DRAWS, *, _rn: _Draws | None = None) -> np.ndarray:
    """[..., E] the model mean sorted-share curve for params [...] and row totals [...] (broadcast together):
    the family's base shares plus the sampling noise of `totals` assignments, sorted, averaged over the draws."""
    rn = _rn if _rn is not None else _draws(seed, draws, num_experts)
    p = _base_shares(family, np.asarray(params, dtype=np.float64), rn, num_experts, top_k)
    n = np.asarray(totals, dtype=np.float64)[..., None, None]
    y = np.sqrt(p) * rn.sampling
    q = np.clip(p + (y - p * y.sum(axis=-1, keepdims=True)) / np.sqrt(n), 0.0, None)
    q /= q.sum(axis=-1, keepdims=True)
    return -np.sort(-q, axis=-1).mean(axis=-2)


def observed_curves(trace: RoutingTrace) -> tuple[np.ndarray, np.ndarray, int]:
    """([L, E] mean sorted-share curve, [L] mean row total, rows per layer) over the non-empty (step, mb) rows.
    A block of rows at a time, each layer's curve summed row after row (the same sums as one pass over all rows)."""
    num_layers, num_experts = trace.num_layers, trace.num_experts
    if num_layers == 0:
        raise SpecError("counts", trace.counts.shape, "a trace with at least one layer", source=trace.path)
    curves = np.zeros((num_layers, num_experts))
    totals, used = np.zeros(num_layers, dtype=np.int64), np.zeros(num_layers, dtype=np.int64)
    for layer in range(num_layers):
        for rows in _row_blocks(trace.counts, layer):  # int64 [rows, E]
            row_totals = rows.sum(axis=-1)
            valid = row_totals > 0
            shares = rows / np.maximum(row_totals, 1)[:, None]
            curves[layer] = np.add.reduce(np.vstack([curves[layer], -np.sort(-shares, axis=-1) * valid[:, None]]))
            totals[layer] += (row_totals * valid).sum()
            used[layer] += valid.sum()
    if np.any(used == 0):
        raise SpecError("counts", trace.counts.shape, "a trace with at least one non-empty row in every layer",
                        source=trace.path)
    return curves / used[:, None], totals / used, int(used.min())


def _row_blocks(counts: np.ndarray, layer: int):
    """One layer's (step, micro-batch) rows in order, summed over source ranks: int64 [rows, E] blocks of at most
    _OBSERVED_CHUNK_ELEMENTS values (or one row)."""
    num_steps, _, num_mbs, _, num_experts = counts.shape
    rows = max(1, _OBSERVED_CHUNK_ELEMENTS // num_experts)
    if num_mbs <= rows:
        steps = rows // max(num_mbs, 1)  # no micro-batches: no rows, and the caller says so
        for s in range(0, num_steps, steps):
            yield counts[s:s + steps, layer].sum(axis=2, dtype=np.int64).reshape(-1, num_experts)
        return
    for s in range(num_steps):
        for m in range(0, num_mbs, rows):
            yield counts[s, layer, m:m + rows].sum(axis=1, dtype=np.int64)


def _search(family: RoutingDistribution, observed: np.ndarray, totals: np.ndarray, top_k: int,
            rn: _Draws) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per layer: the best parameter [L], its rmse [L] and its model curve [L, E], searched in chunks of layers."""
    num_layers, num_experts = observed.shape
    chunk = max(1, _CHUNK_ELEMENTS // (_GRID_POINTS * rn.normal.size))
    parts = [_search_chunk(family, observed[i:i + chunk], totals[i:i + chunk], top_k, rn)
             for i in range(0, num_layers, chunk)]
    return tuple(np.concatenate(arrays) for arrays in zip(*parts))


def _search_chunk(family: RoutingDistribution, observed: np.ndarray, totals: np.ndarray, top_k: int,
                  rn: _Draws) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A coarse grid over the family's range, then finer grids within one step of the best point (in log10 for
    Dirichlet). Grid 0 is shared by all layers; the later grids are per layer."""
    num_layers, num_experts = observed.shape
    log = family is DIRICHLET
    lo, hi = (np.log10(v) if log else v for v in SEARCH_RANGE[family])
    lo_b, hi_b = np.full((1, 1), lo), np.full((1, 1), hi)
    idx = np.arange(num_layers)
    for n in (_GRID_POINTS, *([_REFINE_POINTS] * _REFINE_ROUNDS)):
        grid = lo_b + (hi_b - lo_b) * np.linspace(0.0, 1.0, n)  # [1 or L, n]
        params = 10.0 ** grid if log else grid
        curves = _curves(family, params, totals, top_k, rn)  # [L, n, E]
        sse = ((curves - observed[:, None, :]) ** 2).mean(axis=-1)
        best = sse.argmin(axis=1)
        centre, step = np.broadcast_to(grid, sse.shape)[idx, best], (hi_b - lo_b)[:, 0] / (n - 1)
        lo_b, hi_b = np.maximum(centre - step, lo)[:, None], np.minimum(centre + step, hi)[:, None]
    return np.broadcast_to(params, sse.shape)[idx, best], np.sqrt(sse[idx, best]), curves[idx, best]


def _curves(family: RoutingDistribution, params: np.ndarray, totals: np.ndarray, top_k: int,
            rn: _Draws) -> np.ndarray:
    """[L, n, E] model_curves of params [1 or L, n] at totals [L], a few candidates at a time so that no temporary
    holds more than _CHUNK_ELEMENTS values (or one candidate's draws x experts). Each candidate is computed alone
    either way: the chunking changes no number."""
    num_experts, n = rn.normal.shape[-1], params.shape[1]
    step = max(1, _CHUNK_ELEMENTS // (totals.shape[0] * rn.normal.size))
    return np.concatenate([model_curves(family, params[:, j:j + step], totals[:, None], num_experts, top_k, _rn=rn)
                           for j in range(0, n, step)], axis=1)


def _resolve_top_k(trace: RoutingTrace, top_k: int | None) -> int:
    k = top_k if top_k is not None else trace.top_k
    if k is None:
        raise SpecError("top_k", None, "top_k given (the trace does not say how many experts each token picks)")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= trace.num_experts:
        raise SpecError("top_k", k, f"an integer in [1, {trace.num_experts}] (experts per token)")
    return int(k)


def check_fit_size(trace: RoutingTrace, draws: int = DRAWS) -> None:
    """Raise (naming the trace's file) unless fitting `trace` with `draws` stays within MAX_FIT_RANDOM_BYTES and
    MAX_FIT_MODEL_SHARES. Integer arithmetic on the sizes alone: nothing is allocated."""
    max_bytes, max_shares = MAX_FIT_RANDOM_BYTES, MAX_FIT_MODEL_SHARES  # read at call time: tests lower them
    layers, experts = trace.num_layers, trace.num_experts
    if draws * experts * _RANDOM_BYTES_PER_CELL > max_bytes:
        raise SpecError("num_experts", experts,
                        f"at most {max_bytes // (draws * _RANDOM_BYTES_PER_CELL):,} experts to fit with {draws} draws "
                        f"(the fit's random numbers take experts x draws x {_RANDOM_BYTES_PER_CELL} bytes, at most "
                        f"MAX_FIT_RANDOM_BYTES = {max_bytes:,})", source=trace.path)
    if layers * draws * experts > max_shares:
        raise SpecError("num_layers", layers,
                        f"at most {max_shares // (draws * experts):,} layers to fit with {experts} experts and {draws} "
                        f"draws (layers x draws x experts at most MAX_FIT_MODEL_SHARES = {max_shares:,}: the fit's "
                        "time)", source=trace.path)


def fit_trace(trace: RoutingTrace, top_k: int | None = None, seed: int = 0, *, draws: int = DRAWS) -> FitReport:
    """Fit Zipf, Dirichlet and log-normal to every layer of `trace` (deterministic for a given seed and draws).
    top_k: experts per token (caps every share at 1/top_k); defaults to the trace's. All (step, micro-batch) rows
    are used: the observed side is one pass over the counts, and the cost is in the model curves,
    about layers * 3 families * 49 candidates * draws * E * log E (bounded by check_fit_size first)."""
    k = _resolve_top_k(trace, top_k)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SpecError("seed", seed, "an integer >= 0")
    if isinstance(draws, bool) or not isinstance(draws, (int, np.integer)) or draws < 1:
        raise SpecError("draws", draws, "an integer >= 1 (Monte Carlo draws per model curve)")
    if trace.num_experts < 2:
        raise SpecError("num_experts", trace.num_experts, "at least 2 experts to fit a skew", source=trace.path)
    check_fit_size(trace, int(draws))
    try:
        return _fit(trace, k, seed, int(draws))
    except MemoryError:  # the bounds above make this unlikely on any machine that holds the trace; never a traceback
        raise SpecError("counts", f"a trace of shape {trace.counts.shape} and {draws} draws",
                        "a trace whose fit fits in this machine's memory (MemoryError while fitting it)",
                        source=trace.path) from None


def _fit(trace: RoutingTrace, k: int, seed: int, draws: int) -> FitReport:
    observed, totals, rows = observed_curves(trace)
    num_experts = trace.num_experts
    rn = _draws(seed, draws, num_experts)
    per_family = {f: _search(f, observed, totals, k, rn) for f in FAMILIES}
    layers = []
    for layer in range(trace.num_layers):
        fits = tuple(FamilyFit(f, float(p[layer]), float(r[layer]), float(observed[layer, 0] * num_experts),
                               float(c[layer, 0] * num_experts)) for f, (p, r, c) in per_family.items())
        layers.append(LayerFit(layer, fits, min(fits, key=lambda fit: fit.rmse)))
    return FitReport(tuple(layers), num_experts, k, trace.source, rows, float(totals.mean()), draws)
