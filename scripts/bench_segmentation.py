"""Benchmark segmentation: fit time and memory for 10k / 100k / 1M users, assignment rate, ARIs.

Each size runs in its own process (so peak RSS is that size's alone). Users come from
``envs/four_segments.yaml``; their behaviour is the ridge-fitted preference direction from 20
simulated feedback events each (the simulator's vectorised path on a pool of corpus replies), so
the table has the real shape: 4 profile attributes incl. multi-valued interests + 9 behaviour
columns. ``fit_s`` times ``Segmenter().fit(table)`` with the default config (k by silhouette on
a sample, MiniBatchKMeans above 50k users, float32). The ARIs: four_segments with 400 users and
20+ events each through the full text pipeline (k=4), and the two Polis conversations through
the store's importer (behaviour only, k by silhouette; ``ari_polis`` is their mean).

Progress goes to stderr; the last stdout line is JSON with ``fit_s``, ``peak_rss_mb`` (both
keyed by user count), ``assign_users_per_s``, ``ari_combined``, ``ari_profile``,
``ari_behaviour``, ``ari_polis``, plus context (CPU seconds, table-building seconds, k, load).

    .venv/bin/python scripts/bench_segmentation.py [--sizes 10000,100000,1000000]
"""

from __future__ import annotations

import os

# OpenMP threads spin while waiting for work; on a machine shared with other jobs that spinning
# makes K-means many times slower. Passive waiting must be set before the runtime loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

EVENTS_PER_USER = 20
CHUNK_USERS = 100_000
POLIS = Path("/work/shared/data/polis")
ASSIGN_USERS = 100_000


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class PeakRSS:
    """Samples this process's RSS every 20 ms in a thread; ``peak_mb`` is the highest seen."""

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def peak_mb(self) -> float:
        return round(self.peak / 2**20, 1)


# --- synthetic tables at scale --------------------------------------------------------------------


def _reply_pool(n: int, seed: int) -> np.ndarray:
    """Reply features of ``n`` corpus (prompt, reply) pairs of independently drawn styles."""
    from rlhf_persona.models.corpus import build_corpus
    from rlhf_persona.simulation import reply_features

    examples = build_corpus(n, seed, system_share=0.0)
    prompts = [ex["prompt"][-1]["content"] for ex in examples]
    replies = [ex["completion"][0]["content"] for ex in examples]
    return reply_features(prompts, replies, embed=False)


def _profiles(users) -> list[dict]:
    cols = users.profile_columns
    keys = [k for k in cols if k != "interests"]
    values = [cols[k].tolist() for k in keys]
    return [
        {**dict(zip(keys, row, strict=True)), "interests": list(interests)}
        for row, interests in zip(zip(*values, strict=True), cols["interests"], strict=True)
    ]


def synthetic_table(n: int, seed: int = 0):
    """A UserTable of ``n`` four_segments users with 20 feedback events each (fast path)."""
    from rlhf_persona.segmentation import UserTable
    from rlhf_persona.segmentation.features import feature_stats, preference_directions
    from rlhf_persona.simulation import FEATURE_NAMES, FeedbackSimulator, load_population
    from rlhf_persona.simulation.user import ABSTAIN, PAIRWISE, RATING

    # Reason tags are not needed here and cost a Python loop per negative event.
    population = load_population("four_segments").model_copy(update={"reason_tag_rate": 0.0})
    users = population.sample_users(n, seed)
    pool = _reply_pool(3000, seed)
    stats = feature_stats(pool)
    sim = FeedbackSimulator(users, seed=seed, embed=False)
    rng = np.random.default_rng(seed)
    behaviour = np.zeros((n, len(FEATURE_NAMES)), dtype=np.float32)
    n_feedback = np.zeros(n, dtype=np.int64)
    for start in range(0, n, CHUNK_USERS):
        stop = min(start + CHUNK_USERS, n)
        idx = np.repeat(np.arange(start, stop), EVENTS_PER_USER)
        a, b = rng.integers(0, len(pool), (2, len(idx)))
        batch = sim.respond_features(idx, pool[a], pool[b])
        keep = batch.kind != ABSTAIN
        kind, value = batch.kind[keep], batch.value[keep].astype(np.float64)
        signal = np.where(kind == RATING, (value - 3.0) / 2.0, np.sign(value))
        local = idx[keep] - start
        behaviour[start:stop] = preference_directions(
            local, pool[a[keep]], pool[b[keep]], kind == PAIRWISE, signal, stop - start, stats
        )
        n_feedback[start:stop] = np.bincount(local, minlength=stop - start)
    ids = users.ids
    return UserTable(ids, _profiles(users), behaviour, n_feedback, list(FEATURE_NAMES),
                     "features", stats)  # fmt: skip


# --- workers (one process each) -------------------------------------------------------------------


def worker_fit(n: int) -> dict:
    from rlhf_persona.segmentation import Segmenter

    t0 = time.perf_counter()
    table = synthetic_table(n)
    table_s = time.perf_counter() - t0
    _log(f"  {n:,} users: table built in {table_s:.1f} s; fitting")
    seg = Segmenter()
    with PeakRSS() as rss:
        wall, cpu = time.perf_counter(), time.process_time()
        seg.fit(table)
        fit_s, fit_cpu = time.perf_counter() - wall, time.process_time() - cpu
    # Assignment: a mix of users with feedback and cold-start users (no feedback yet).
    m = min(ASSIGN_USERS, n)
    batch = table.subset(np.arange(m))
    batch.n_feedback[::4] = 0
    batch.behaviour[::4] = 0
    wall = time.perf_counter()
    seg.assign(batch)
    assign_rate = m / (time.perf_counter() - wall)
    return {
        "n": n,
        "table_s": round(table_s, 2),
        "fit_s": round(fit_s, 2),
        "fit_cpu_s": round(fit_cpu, 2),
        "peak_rss_mb": rss.peak_mb,
        "assign_users_per_s": round(assign_rate),
        "k": seg.k_,
    }


def worker_ari() -> dict:
    from sklearn.metrics import adjusted_rand_score

    from rlhf_persona.models.corpus import Style, make_reply
    from rlhf_persona.segmentation import Segmenter, user_table_from_events
    from rlhf_persona.simulation import FeedbackSimulator, load_population, sample_prompts
    from rlhf_persona.styles import TOPICS

    users = load_population("four_segments").sample_users(400, 0)
    rng = random.Random(0)
    pool = {
        t: [make_reply(Style.sample(rng), t, rng.choice(kws), rng) for _ in range(120)]
        for t, kws in TOPICS.items()
    }
    idx = np.repeat(np.arange(400), 30)  # 30 draws: with abstentions, 20+ events per user
    prompts, topics = sample_prompts(users, idx, 0)
    replies = [rng.choice(pool[t]) for t in topics]
    others = [rng.choice(pool[t]) for t in topics]
    events = FeedbackSimulator(users, seed=0, embed=False).respond(idx, prompts, replies, others)
    table = user_table_from_events(users.records(), events)
    out = {"min_events_per_user": int(table.n_feedback.min())}
    for f in ("both", "profile", "behaviour"):
        seg = Segmenter(k=4, features=f).fit(table)
        key = "combined" if f == "both" else f
        out[f"ari_{key}"] = round(adjusted_rand_score(users.truth.segment, seg.labels_), 4)
    return out


def worker_polis() -> dict:
    from sklearn.metrics import adjusted_rand_score

    from rlhf_persona.feedback import FeedbackStore
    from rlhf_persona.feedback.importers import import_polis
    from rlhf_persona.segmentation import Segmenter, user_table_from_store

    warnings.filterwarnings("ignore", message="RLHF_PERSONA_HASH_KEY")
    out = {}
    for conv in ("brexit-consensus", "15-per-hour-seattle"):
        with tempfile.TemporaryDirectory() as tmp:
            store = FeedbackStore(Path(tmp) / "polis.db")
            import_polis(store, POLIS / conv)
            table = user_table_from_store(store, behaviour="items")
            seg = Segmenter(features="behaviour", k_range=(2, 5), min_feedback=7).fit(table)
            group = {u["user_id"]: u["meta"].get("polis_group_id") for u in store.users()}
            store.close()
        polis = np.array([-1 if group[u] is None else group[u] for u in table.user_ids])
        placed = polis >= 0
        out[conv] = round(adjusted_rand_score(polis[placed], seg.labels_[placed]), 4)
    return out


def _run_worker(*args: str, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--worker", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"worker {args} failed with status {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, *rest = args.worker
        result = {"fit": lambda: worker_fit(int(rest[0])), "ari": worker_ari,
                  "polis": worker_polis}[kind]()  # fmt: skip
        print(json.dumps(result), flush=True)
        return

    started = time.perf_counter()
    load_before = os.getloadavg()
    sizes = [int(s) for s in args.sizes.split(",")]
    fits = {}
    for n in sizes:
        _log(f"fit {n:,} users …")
        fits[n] = _run_worker("fit", str(n), timeout=600)
        _log(f"  fit {fits[n]['fit_s']} s (CPU {fits[n]['fit_cpu_s']} s), "
             f"peak RSS {fits[n]['peak_rss_mb']} MB, k={fits[n]['k']}")  # fmt: skip
    _log("ARI on four_segments …")
    ari = _run_worker("ari", timeout=600)
    _log(f"  {ari}")
    _log("ARI on Polis …")
    polis = _run_worker("polis", timeout=600)
    _log(f"  {polis}")
    largest = max(sizes)
    result = {
        "fit_s": {str(n): fits[n]["fit_s"] for n in sizes},
        "peak_rss_mb": {str(n): fits[n]["peak_rss_mb"] for n in sizes},
        "assign_users_per_s": fits[largest]["assign_users_per_s"],
        "ari_combined": ari["ari_combined"],
        "ari_profile": ari["ari_profile"],
        "ari_behaviour": ari["ari_behaviour"],
        "ari_polis": round(float(np.mean(list(polis.values()))), 4),
        "ari_polis_by_conversation": polis,
        "fit_cpu_s": {str(n): fits[n]["fit_cpu_s"] for n in sizes},
        "table_build_s": {str(n): fits[n]["table_s"] for n in sizes},
        "k_chosen": {str(n): fits[n]["k"] for n in sizes},
        "min_events_per_user_ari": ari["min_events_per_user"],
        "total_s": round(time.perf_counter() - started, 1),
        "loadavg_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
