"""bench/convergence.py's search, on made-up accuracy curves whose best learning rate is known: the grid grows
until each method's best is inside it, the seeds rerun only the best rate, and the summary's mean and range are
those of the seeds."""
import math

from bench.convergence import grown, loss_at, summary_row, sweep_methods


class FakeSweep:
    """Accuracy a known function of (method, lr, seed); records every run asked for."""

    def __init__(self, peaks):
        self.peaks, self.asked = peaks, []

    def accuracy(self, method, lr, seed):
        distance = abs(math.log10(lr) - math.log10(self.peaks[method]))
        return max(0.0, 0.9 - 0.3 * distance) + 0.01 * seed

    def many(self, jobs):
        self.asked += [(m, lr, seed) for m, _, lr, seed in jobs]
        return [{"task": "t", "method": m, "lr": lr, "seed": seed, "accuracy": self.accuracy(m, lr, seed),
                 "correct": 0, "total": 100, "final_loss": lr, "loss_at": {"10": 1.0 + seed}, "train_seconds": 1.0,
                 "metrics": []} for m, _, lr, seed in jobs]


def test_the_grid_grows_past_an_edge_until_the_best_is_inside():
    peaks = {"low": 1e-3 / 9, "middle": 3e-3, "high": 0.27}  # on the grid as it grows
    sweep = FakeSweep(peaks)
    results = sweep_methods(sweep, {m: ([], None) for m in peaks}, [1e-3, 3e-3, 1e-2, 3e-2], max_grow=3,
                            seeds=3)
    for method, peak in peaks.items():
        result = results[method]
        assert math.isclose(result["best_lr"], peak, rel_tol=1e-9), method
        assert not result["best_on_edge"]
        lrs = [r["lr"] for r in result["grid"]]
        assert lrs == sorted(lrs) and min(lrs) < peak < max(lrs)
        assert [r["seed"] for r in result["seeds"]] == [0, 1, 2]
        assert all(r["lr"] == result["best_lr"] for r in result["seeds"])
    # The middle method's grid stayed as it was; the others grew by three 3x steps each (one past the best).
    assert [len(results[m]["grid"]) for m in ("low", "middle", "high")] == [7, 4, 7]
    # Seeds 1 and 2 ran at the best rate only.
    assert sorted(s for m, lr, s in sweep.asked if s) == [1, 1, 1, 2, 2, 2]


def test_a_grid_that_cannot_grow_enough_says_its_best_is_on_the_edge():
    sweep = FakeSweep({"far": 1e-5})
    result = sweep_methods(sweep, {"far": ([], None)}, [1e-3, 1e-2], max_grow=1, seeds=1)["far"]
    assert math.isclose(result["best_lr"], 1e-4, rel_tol=1e-9) and result["best_on_edge"]


def test_growing_stops_on_a_flat_grid_and_follows_a_tied_edge():
    assert grown([1e-3, 1e-2], {1e-3: 1.0, 1e-2: 1.0}) == []
    extra = grown([1e-3, 1e-2, 1e-1], {1e-3: 1.0, 1e-2: 1.0, 1e-1: 0.5})
    assert len(extra) == 1 and math.isclose(extra[0], 1e-4, rel_tol=1e-9)


def test_summary_is_the_mean_and_range_over_seeds():
    result = {"best_lr": 0.01, "best_on_edge": False,
              "seeds": [{"accuracy": a, "final_loss": f, "loss_at": {"10": early, "25": None, "50": None, "100": None}}
                        for a, f, early in ((0.5, 0.1, 1.0), (0.8, 0.2, 2.0), (0.6, 0.3, 3.0))]}
    row = summary_row("m", result)
    assert math.isclose(row["accuracy_mean"], (0.5 + 0.8 + 0.6) / 3)
    assert (row["accuracy_min"], row["accuracy_max"], row["n_seeds"]) == (0.5, 0.8, 3)
    assert math.isclose(row["loss"]["10"], 2.0) and math.isclose(row["loss"]["final"], 0.2)
    assert row["loss"]["25"] is None


def test_loss_at_averages_the_window_up_to_the_step():
    rows = [{"step": s, "loss": float(s)} for s in range(1, 31)]
    assert loss_at(rows, 10) == (6 + 7 + 8 + 9 + 10) / 5
    assert loss_at(rows, 31) is None
