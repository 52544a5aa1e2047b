"""Per-phase wall times of ``register`` outside the optimisation (affine, quick-start pair).

Wraps the phases' functions in ``miregister.registration.register``'s namespace (and the
orientation scores, the pyramid cache) with timers, runs ``register`` 1 + N times in one
process and prints the first call and the min over the N later calls, per phase, plus
``result.timings`` (prefixed ``t:``)::

    python benchmarks/phase_timings.py [N=5]
"""
import functools
import sys
import time

from miregister import register, read_image
R = sys.modules["miregister.registration.register"]
import miregister.registration.searches as S
acc = {}
def wrap(mod, name, key):
    fn = getattr(mod, name)
    @functools.wraps(fn)
    def w(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            acc[key] = acc.get(key, 0.0) + time.perf_counter() - t
    setattr(mod, name, w)
for name, key in [("measurement_region", "prep:foreground"), ("starting_transform", "prep:init"),
                  ("final_flip_check", "flip"), ("validate", "validation"), ("resample", "warp"),
                  ("check_image", "prep:check_image"), ("check_memory", "prep:check_memory"), ("check_level_sizes","prep:levelsizes"),
                  ("load_mask", "prep:mask")]:
    wrap(R, name, key)
wrap(S, "_orientation_scores", "orient_scores")
wrap(S, "level_problem", "searches:level_problem")
import miregister.registration.levels as L
wrap(L.LevelCache, "get", "pyramid(cache.get)")
f = read_image("data/mni152_t1_2mm.nii.gz"); m = read_image("data/mni152_t2like_moved_2mm.nii.gz")
n = int(sys.argv[1]) if len(sys.argv) > 1 else 5
rows = []
for i in range(n + 1):
    acc.clear()
    t = time.perf_counter()
    r = register(f, m, transform="affine", verbose=False)
    row = dict(acc); row["total"] = time.perf_counter() - t
    row.update({"t:" + k: v for k, v in r.timings.items()})
    rows.append(row)
    print(i, {k: round(v, 3) for k, v in row.items()}, flush=True)
keys = rows[0].keys()
print("FIRST ", {k: round(rows[0][k], 3) for k in keys})
print("MIN2nd", {k: round(min(r[k] for r in rows[1:]), 3) for k in keys})
print("val after", r.validation["after"], "before", r.validation["before"])
print("quality", r.quality["signals"] if "signals" in r.quality else r.quality)
print("matrix", r.transform.affine_matrix().tolist())
