"""Power sampling by sequential Monte Carlo (Power-SMC): answers at near plain-decoding latency.

Reference: Azizi et al., "Power-SMC: sampling from power distributions of language models with
sequential Monte Carlo", arXiv 2602.10273 (the algorithm followed here).

Target: pi_alpha(y | x) ∝ p(y | x) ** alpha, as for the MH sampler (mh.py). Proposal q: the base model
at temperature 1/alpha, token by token: the proposal that minimises the variance of each token's
weight update. A partial answer's importance weight is prod_t p(y_t) ** alpha / q(y_t) = prod_t Z_t,
so the incremental log-weight of a token is its log normaliser zeta_t (normaliser.py), the same
quantity the MH ratio is made of.

With N particles, all log-weights w_i = 0, and blocks b = 1..K of B tokens (horizon H_b):

  1. Grow.      Every particle is one engine request, held for the whole answer, drawing from q
                until EOS, a stop string or max_tokens: tokens arrive as the engine makes them. At
                H_b the sampler waits for every particle to reach H_b (or end) and adds the zeta_t
                of its tokens up to H_b to w_i; a particle that ran ahead keeps its later tokens
                for the next block. EOS is absorbing: an ended particle keeps its weight and costs
                nothing more.
  2. Resample.  If the effective sample size ESS = (sum e^w)^2 / sum e^2w falls below kappa * N
                (and more blocks follow), draw N ancestors by systematic resampling with chance
                ∝ e^w and reset the weights to equal (or, with chopthin, thin the light particles
                and chop the heavy ones into copies that keep unequal weights within a ratio
                eta: Gandy & Lee 2017). An ancestor's first copy keeps its request;
                every other copy is a new request whose prompt ends with the ancestor's tokens up
                to H_b (a prefix-cache hit), and the requests of the particles no copy keeps are
                aborted. Re-submitting every particle every block, as before, cost a prefill and a
                scheduling round trip per particle per block (DESIGN.md section 14); it is kept
                (PowerConfig.held_particles = False) to be measured against.
                A copy prefills the part of its prompt past the prefix cache's last whole block
                (1 to kv_block tokens). With PowerConfig.resample_at = "kv_block", degenerate
                weights wait (growing, reweighted every block) for a horizon where that part is
                at most one block, so that a copy costs at most B tokens of prefill.
                Where the engine's load chose N (PowerConfig.follow_load), the answer also lets
                particles go when the load has grown since: it resamples, whatever the ESS, to
                the fewer particles the room left allows (systematic: N' ancestors ∝ e^w, equal
                weights after), so that a request sized on an idle engine does not hold a burst
                that arrives after it to more sequences than the batch has room for.
  3. Stream.    The answer will be one of the particles, and every particle descends from the ones
                alive now at H_b, so the prefix all of them share up to H_b is final: it is yielded
                as it grows.

A particle's tokens depend only on its request's seed and prompt, never on when they arrive, so a
seeded answer is reproducible.

The answer is one final particle, drawn with chance ∝ e^w.

Exactness: the answer's law tends to pi_alpha as N grows (its bias falls like 1/N); at N = 1 it is
plain sampling at temperature 1/alpha. tests/power/test_smc.py measures the law on an enumerable
model against a pure-Python Power-SMC over the model's exact conditionals.

All particles only ever await the engine, so every particle of every request decodes in one engine
batch; each request's particles share one affinity, so a remote engine keeps them on one worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence

import numpy as np

from service.engines.base import Engine
from service.power.config import PowerConfig
from service.power.proposal import StopAt, Trajectory, normalisers, proposal_options
from service.power.report import SamplerStats
from service.power.sample import FinalTokens, PowerSample

__all__ = [
    "CHOPTHIN_ETA",
    "PowerSMCSampler",
    "chopthin_resample",
    "effective_sample_size",
    "systematic_resample",
]

# Chopthin's bound on the ratio of weights after resampling: Gandy & Lee's default, 3 + 2 sqrt 2.
CHOPTHIN_ETA = 3 + 2 * math.sqrt(2)


def effective_sample_size(log_weights: np.ndarray) -> float:
    w = np.exp(log_weights - log_weights.max())
    return float(w.sum() ** 2 / (w**2).sum())


def systematic_resample(
    log_weights: np.ndarray, rng: np.random.Generator, size: int | None = None
) -> np.ndarray:
    """``size`` (default N) ancestor indices, each drawn with chance ∝ exp(log weight), from one
    uniform offset: lower variance than independent draws (Douc & Cappé 2005)."""
    n = len(log_weights) if size is None else size
    w = np.exp(log_weights - log_weights.max())
    edges = np.cumsum(w / w.sum())
    edges[-1] = 1.0  # no index past the end from rounding
    points = (rng.random() + np.arange(n)) / n
    return np.searchsorted(edges, points, side="right")


def chopthin_resample(
    log_weights: np.ndarray, rng: np.random.Generator, eta: float = CHOPTHIN_ETA
) -> tuple[np.ndarray, np.ndarray]:
    """N ancestor indices and the log-weights their copies carry, by chopthin (Gandy & Lee 2017).

    With weights scaled to mean 1, a threshold a and b = eta * a / 2: a particle lighter than a
    survives with chance w / a at weight a (thinning), one between a and b survives once as it is,
    and one heavier than b becomes floor or ceil of w / b copies sharing its weight (chopping); a
    is where these expected counts sum to N, and the counts are drawn systematically, so exactly N
    remain, each particle's weight is kept in expectation, and no two weights differ by more than
    eta. Unlike systematic resampling, the weights stay unequal: less is thrown away.
    """
    n = len(log_weights)
    w = np.exp(log_weights - log_weights.max())
    w = w / w.sum() * n

    def expected_counts(a: float) -> np.ndarray:
        b = eta * a / 2
        return np.where(w < a, w / a, np.where(w < b, 1.0, w / b))

    # The counts fall as a grows, from more than N (a -> 0) to 1 at most (a = N): bisect on log a.
    low, high = 1e-300, float(n)
    for _ in range(200):
        mid = math.sqrt(low * high)
        low, high = (mid, high) if expected_counts(mid).sum() > n else (low, mid)
        if high / low < 1 + 1e-12:
            break
    counts = expected_counts(high)
    edges = np.cumsum(counts / counts.sum())
    edges[-1] = 1.0
    ancestors = np.searchsorted(edges, (rng.random() + np.arange(n)) / n, side="right")
    copies = np.bincount(ancestors, minlength=n)
    # A thinned survivor weighs a (= w / its expected count); a chopped particle's copies share w.
    thinned = np.divide(w, counts, out=np.zeros_like(w), where=counts > 0)
    weight = np.where(counts < 1, thinned, w / np.maximum(copies, 1))
    return ancestors, np.log(weight[ancestors])


class PowerSMCSampler:
    """Draws answers from p(y | x) ** alpha through any ``Engine``, one particle system per answer."""

    def __init__(self, engine: Engine):
        self.engine = engine

    async def run(
        self,
        prompt_ids: Sequence[int],
        config: PowerConfig,
        *,
        run_id: int = 0,
        stop_at: StopAt | None = None,
    ) -> AsyncIterator[FinalTokens | PowerSample]:
        # numpy takes unsigned seed words; OpenAI seeds may be any 64-bit integer, negative too.
        rng = np.random.default_rng(None if config.seed is None else [config.seed % 2**64, run_id, 1])
        stats = SamplerStats(method="smc")
        progress = asyncio.Event()  # set whenever a stream has news

        def start(prefix: Trajectory, block: int, slot: int, why: str) -> _ParticleStream:
            # Held, a request runs to max_tokens; re-submitted, to the next block's horizon.
            until = config.max_tokens if config.held_particles else config.horizon(block + 1)
            return _ParticleStream(
                self.engine,
                prompt_ids,
                prefix,
                config,
                until=until,
                seed=(run_id, block, slot, why),
                affinity=affinity,
                stop_at=stop_at,
                progress=progress,
                stats=stats,
            )

        affinity = uuid.uuid4().hex
        particles = [start(Trajectory(), 0, i, "smc") for i in range(config.particles)]
        log_weights = np.zeros(config.particles)
        weighed = [0] * config.particles  # tokens of each particle already in its weight
        streamed = 0
        try:
            for block in range(1, config.num_blocks + 1):
                horizon = config.horizon(block)

                # 1. Wait until every particle has grown to the horizon (or ended), and reweight by
                #    its tokens up to there; a stream that ran ahead keeps its later tokens.
                await _until_grown(particles, horizon, progress)
                for i, particle in enumerate(particles):
                    upto = min(len(particle.trajectory), horizon)
                    log_weights[i] += sum(particle.trajectory.zetas[weighed[i] : upto])
                    weighed[i] = upto
                if all(p.ended_by(horizon) for p in particles) or block == config.num_blocks:
                    break  # nothing left to grow: later blocks change nothing

                # 2. Resample when the weights have degenerated: an ancestor's first copy keeps
                #    its stream, every other copy is a new request from the ancestor's tokens up to
                #    the horizon (a prefix-cache hit), and the streams no copy keeps are aborted.
                #    Where the load chose N and has grown since, resample to fewer (load_share).
                #    With resample_at "kv_block", only at horizons where the copies' prompts end
                #    just past a whole prefix-cache block (may_resample), and there unless the
                #    weights are even (ess_threshold).
                ess = effective_sample_size(log_weights)
                low = ess < config.ess_threshold * len(particles)
                due = low and config.may_resample(len(prompt_ids), horizon)
                keep = self._load_share(config, particles)
                if due or keep < len(particles):
                    stats.resamples += 1
                    stats.min_ess = ess if stats.min_ess is None else min(stats.min_ess, ess)
                    if config.resampling == "chopthin" and keep == len(particles):
                        ancestors, resampled = chopthin_resample(log_weights, rng)
                    else:
                        ancestors = systematic_resample(log_weights, rng, keep)
                        resampled = np.zeros(keep)
                    kept: set[int] = set()
                    survivors = []
                    for slot, a in enumerate(ancestors):
                        if a in kept:
                            survivors.append(start(particles[a].at(horizon), block, slot, "copy"))
                        else:
                            kept.add(a)
                            survivors.append(particles[a])
                    await _stop_all(p for i, p in enumerate(particles) if i not in kept)
                    particles = survivors
                    weighed = [min(len(p.trajectory), horizon) for p in particles]
                    log_weights = resampled
                if not config.held_particles:  # a new request for each whose request ends here
                    moved = [
                        start(p.at(horizon), block, slot, "block")
                        if p.until <= horizon and not p.ended_by(horizon)
                        else p
                        for slot, p in enumerate(particles)
                    ]
                    await _stop_all(p for p, q in zip(particles, moved, strict=True) if p is not q)
                    particles = moved

                # 3. Stream the prefix every particle shares up to the horizon: no later step can
                #    change it (a later copy restarts at a later horizon).
                trajectories = [p.trajectory for p in particles]
                shared = min(_common_prefix_length(trajectories), horizon)
                if shared > streamed:
                    first = trajectories[0]
                    yield FinalTokens(
                        first.token_ids[streamed:shared],
                        first.logprobs[streamed:shared],
                        first.top_logprobs[streamed:shared],
                    )
                    streamed = shared

            w = np.exp(log_weights - log_weights.max())
            answer = particles[int(rng.choice(len(particles), p=w / w.sum()))].trajectory
        finally:
            await _stop_all(particles)
        stats.final_particles = len(particles)
        stats.normaliser_error_bound = sum(answer.zeta_bounds)
        if stats.min_ess is None:
            stats.min_ess = effective_sample_size(log_weights)
        yield PowerSample(
            token_ids=answer.token_ids,
            logprobs=answer.logprobs,
            top_logprobs=answer.top_logprobs,
            finish_reason="stop" if answer.ended else "length",
            stats=stats,
        )

    def _load_share(self, config: PowerConfig, particles: Sequence[_ParticleStream]) -> int:
        """The particles to keep now: all of them unless the load chose N (config.follow_load)
        and the engine's other sequences have since grown into the room."""
        if config.follow_load is None:
            return len(particles)
        mine = sum(not p.finished for p in particles)
        others = max(0, self.engine.num_running_requests() - mine)
        return config.follow_load.keep(len(particles), others)


class _ParticleStream:
    """One particle's engine request, held for the whole answer: its tokens, with what the weights
    need, arrive into ``trajectory`` as the engine makes them, past the block's horizon too."""

    def __init__(
        self,
        engine: Engine,
        prompt_ids: Sequence[int],
        prefix: Trajectory,
        config: PowerConfig,
        *,
        until: int,
        seed: tuple[int | str, ...],
        affinity: str,
        stop_at: StopAt | None,
        progress: asyncio.Event,
        stats: SamplerStats,
    ):
        self.engine = engine
        self.trajectory = prefix
        self.config = config
        self.stop_at = stop_at
        self.progress = progress
        self.stats = stats
        self.until = until  # the length at which its request ends
        self.error: BaseException | None = None
        self.task: asyncio.Task[None] | None = None
        if not prefix.ended and len(prefix) < until:
            self.task = asyncio.create_task(self._feed(prompt_ids, seed, affinity))

    @property
    def finished(self) -> bool:
        """Nothing more will arrive: ended, at its request's length (``until``), stopped or failed."""
        return self.task is None or self.task.done()

    def ended_by(self, horizon: int) -> bool:
        """Ended (EOS or a stop) within ``horizon`` tokens: absorbing from this block on."""
        return self.trajectory.ended and len(self.trajectory) <= horizon

    def at(self, horizon: int) -> Trajectory:
        """The particle as it stands at ``horizon``: the prefix a copy continues from."""
        if self.ended_by(horizon):
            return self.trajectory.extended(Trajectory(ended=True))
        return self.trajectory.prefix(horizon)

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _feed(self, prompt_ids: Sequence[int], seed: tuple[int | str, ...], affinity: str) -> None:
        config, prefix = self.config, self.trajectory
        info = self.engine.info
        max_tokens = self.until - len(prefix)
        options = proposal_options(config, info.vocab_size, max_tokens=max_tokens, seed=seed)
        k = options.top_logprobs
        stream = self.engine.generate(
            [*prompt_ids, *prefix.token_ids], options, stream=True, affinity=affinity
        )
        try:
            async for part in stream:
                self.stats.tokens_generated += len(part.token_ids)
                zetas, bounds = normalisers(config, part.top_logprobs, k, info.vocab_size)
                # In place, not a copy per token: the stream owns its trajectory.
                before, grown = len(self.trajectory), self.trajectory
                grown.token_ids += part.token_ids
                grown.logprobs += part.logprobs
                grown.zetas += zetas
                grown.zeta_bounds += bounds
                grown.top_logprobs += part.top_logprobs
                self.trajectory = self._cut(grown, new_from=before, started=len(prefix))
                self.progress.set()
                if self.trajectory.ended:
                    break  # a stop string: the engine's request is closed below
        except Exception as exc:
            self.error = exc
        finally:
            if isinstance(stream, AsyncGenerator):
                await stream.aclose()  # aborts what the engine has left of the request
            self.progress.set()

    def _cut(self, trajectory: Trajectory, *, new_from: int, started: int) -> Trajectory:
        """``trajectory`` ended at an EOS among its tokens from ``new_from`` on (those just arrived),
        or at its first stop string after the ``started`` tokens it began with, if any."""
        ids = trajectory.token_ids
        eos_ids = self.engine.info.eos_token_ids
        eos = next((t for t in range(new_from, len(ids)) if ids[t] in eos_ids), None)
        if eos is not None:
            trajectory = trajectory.prefix(eos + 1)
            trajectory.ended = True
        if self.stop_at is not None and (keep := self.stop_at(trajectory.token_ids)) is not None:
            trajectory = trajectory.prefix(max(keep, started + 1))
            trajectory.ended = True
        return trajectory


async def _until_grown(
    particles: Sequence[_ParticleStream], horizon: int, progress: asyncio.Event
) -> None:
    """Return when every particle has ``horizon`` tokens or has finished; raise a stream's error."""
    while True:
        progress.clear()
        for particle in particles:
            if particle.error is not None:
                raise particle.error
        if all(p.finished or len(p.trajectory) >= horizon for p in particles):
            return
        await progress.wait()


async def _stop_all(particles: Iterable[_ParticleStream]) -> None:
    await asyncio.gather(*(particle.stop() for particle in particles))


def _common_prefix_length(particles: Sequence[Trajectory]) -> int:
    first = particles[0].token_ids
    length = min(len(p) for p in particles)
    for p in particles[1:]:
        ids = p.token_ids
        length = next((t for t in range(length) if ids[t] != first[t]), length)
    return length
