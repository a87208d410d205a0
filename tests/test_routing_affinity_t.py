"""Per-timestep affinity routing: AffinityRouting's windows at interval centres, interpolated between them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from helpers import DIGITS, REPO, run_dir, tiny

from dtr_lab import runs
from dtr_lab.callbacks.record_writer import RecordWriter, write_intervals
from dtr_lab.cli import main
from dtr_lab.errors import DTRLabError
from dtr_lab.routing import AffinityRouting
from dtr_lab.routing.affinity_t import InterpolatedAffinityRouting

CONFIG = ["--config", str(REPO / "experiments/routing/affinity_t.yaml")]
# symmetric, decaying with distance: the Fiedler coordinates are exactly 0, 1/2, 1
LINE = [[1.0, 0.5, 0.0], [0.5, 1.0, 0.5], [0.0, 0.5, 1.0]]


def starts_of(table: torch.Tensor) -> list[int]:
    return table.int().argmax(dim=1).tolist()


def test_hand_worked_three_intervals():
    """T = 9, K = 3 (centres t = 1, 4, 7), C = 10, β = 0.5 (C_β = 5, C − C_β = 5), x = 0, 1/2, 1:
    x(t) = 0, 0, 1/6, 1/3, 1/2, 2/3, 5/6, 1, 1 and start = round(5·x) half away from zero."""
    routing = InterpolatedAffinityRouting(LINE, beta=0.5)
    assert routing.coordinates.tolist() == [0.0, 0.5, 1.0]
    assert routing.centres(9).tolist() == [1.0, 4.0, 7.0]
    table = routing.table(9, 10)
    assert starts_of(table) == [0, 0, 1, 2, 3, 3, 4, 5, 5]
    assert (table.sum(dim=1) == 5).all()
    assert starts_of(AffinityRouting(LINE, beta=0.5).table(9, 10)) == [0, 0, 0, 3, 3, 3, 5, 5, 5]


@pytest.mark.parametrize("seed", range(4))
def test_centres_equal_affinity_routing_and_between_them_it_interpolates(seed):
    rng = np.random.default_rng(seed)
    k, T, C = 5, 105, 64  # intervals of 21 timesteps: integer centres 10, 31, 52, 73, 94
    affinity = rng.normal(size=(k, k)).tolist()
    interval_wise = AffinityRouting(affinity, beta=0.75).table(T, C)
    routing = InterpolatedAffinityRouting(affinity, beta=0.75)
    table = routing.table(T, C)
    centres = routing.centres(T).astype(int)
    assert torch.equal(table[centres], interval_wise[centres])
    assert torch.equal(table[: centres[0] + 1], interval_wise[: centres[0] + 1])  # flat before the first
    assert torch.equal(table[centres[-1] :], interval_wise[centres[-1] :])  # and after the last
    starts = starts_of(table)
    for a, b in zip(centres[:-1], centres[1:], strict=True):
        low, high = sorted((starts[a], starts[b]))
        between = starts[a : b + 1]
        assert all(low <= s <= high for s in between)  # between the two centres' windows
        assert between == sorted(between) or between == sorted(between, reverse=True)  # moving one way
        step = (C - 48) * abs(routing.coordinates[b // 21] - routing.coordinates[a // 21]) / (b - a)
        assert max(abs(x - y) for x, y in zip(between[:-1], between[1:], strict=True)) <= step + 1


def test_one_interval_and_identity():
    one = InterpolatedAffinityRouting([[1.0]], beta=0.5)
    assert torch.equal(one.table(7, 8), AffinityRouting([[1.0]], beta=0.5).table(7, 8))
    routing = InterpolatedAffinityRouting(LINE)
    assert routing.identity() == {**AffinityRouting(LINE).identity(), "class": "InterpolatedAffinityRouting"}
    assert runs.routing_label("dtr_lab.routing.affinity_t.InterpolatedAffinityRouting") == "affinity_t"


def test_a_measured_run_over_another_t_is_one_line(tmp_path):
    writer = RecordWriter(tmp_path, "affinity")
    writer.matrix(0, "tag", torch.tensor(LINE))
    write_intervals(tmp_path, "affinity", torch.tensor([0, 300, 700, 1000]))
    routing = InterpolatedAffinityRouting(**runs.read_affinity_options(tmp_path))
    assert routing.centres(1000).tolist() == [149.5, 499.5, 849.5]
    with pytest.raises(DTRLabError, match=r"over T=1000 timesteps, but this model has T=100"):
        routing.table(100, 8)


def test_the_shipped_config_trains_from_a_measured_run(tmp_path):
    source = tmp_path / "measure"
    writer = RecordWriter(source, "affinity")
    writer.matrix(0, "tag", torch.tensor(LINE))
    write_intervals(source, "affinity", torch.tensor([0, 300, 700, 1000]))
    save = tmp_path / "runs"
    main(["fit", *DIGITS, *CONFIG, *tiny(save, steps=2, batch=16), "--trainer.callbacks", "[]",
          "--model.routing.init_args.source", str(source)])
    ckpt = torch.load(run_dir(save) / "checkpoints/last.ckpt", weights_only=False)
    expected = InterpolatedAffinityRouting(**runs.read_affinity_options(source))
    assert ckpt["dtr_lab_identity"]["routing"] == expected.identity()
    config = yaml.safe_load((run_dir(save) / "config.yaml").read_text())
    assert config["model"]["routing"]["init_args"]["source"] == str(source)
    assert runs.run_labels(config)["routing"] == "affinity_t"
