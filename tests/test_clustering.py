"""Interval clustering: exact DP against brute force, block-diagonal affinity, and the CLI
(analysis/cluster_intervals.py)."""

import itertools
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from dtr_lab.diffusion import GaussianDiffusion
from dtr_lab.errors import DTRLabError
from dtr_lab.mtl.clustering import affinity_intervals, ant_snr_cost, snr_intervals

SCRIPT = Path(__file__).resolve().parents[1] / "analysis" / "cluster_intervals.py"


@pytest.fixture
def main(monkeypatch):
    """The script's main() in this interpreter."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import cluster_intervals

    return cluster_intervals.main


def all_splits(n: int, k: int):
    for cuts in itertools.combinations(range(1, n), k - 1):
        yield [0, *cuts, n]


def snr_spread(log_snr: torch.Tensor, edges: list[int]) -> float:
    """Σ over intervals of Σ (log SNR − interval mean)², computed directly."""
    return sum(
        float(((x := log_snr[a:b]) - x.mean()).pow(2).sum())
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    )


def centre_affinity(affinity: torch.Tensor, edges: list[int]) -> float:
    """Σ over intervals of Σ_u affinity[u, centre], computed directly."""
    return sum(float(affinity[a:b, (a + b) // 2].sum()) for a, b in zip(edges[:-1], edges[1:], strict=True))


def ant_snr_objective(snr: list[float], edges: list[int]) -> float:
    """ANT's Σ_{u∈[a,b)} |SNR(u) − SNR(c)|, c = Python's round((a+b)/2), a lone unit its own centre."""
    total = 0.0
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        c = a if b - a == 1 else round((a + b) / 2)
        total += sum(abs(snr[u] - snr[c]) for u in range(a, b))
    return total


def test_ant_snr_cost_by_hand():
    # SNR = 8, 4, 2, 1. Centres round((a+b)/2), halves to even: [0,2) -> 1, [0,3) -> 2 (1.5),
    # [1,4) -> 2 (2.5), [0,4) -> 2, [2,4) -> 3, [1,3) -> 2
    cost = ant_snr_cost(torch.tensor([8.0, 4.0, 2.0, 1.0]))
    assert float(cost[0, 2]) == 4.0  # |8−4| + 0
    assert float(cost[0, 3]) == 8.0  # |8−2| + |4−2| + 0 (the floor centre 1 would give 6)
    assert float(cost[1, 4]) == 3.0  # |4−2| + 0 + |1−2| (a half-up centre 3 would give 4)
    assert float(cost[0, 4]) == 9.0  # 6 + 2 + 0 + 1
    assert float(cost[2, 4]) == 1.0 and float(cost[1, 3]) == 2.0
    assert all(float(cost[a, a + 1]) == 0.0 for a in range(4))  # a lone timestep costs nothing
    # k = 2: [0,1)+[1,4) = 0 + 3 beats [0,2)+[2,4) = 4 + 1 and [0,3)+[3,4) = 8 + 0
    assert snr_intervals(torch.tensor([8.0, 4.0, 2.0, 1.0]), 2) == [0, 1, 4]


@pytest.mark.parametrize(("n", "k"), [(9, 2), (9, 3), (10, 4), (8, 8)])
def test_ant_snr_clustering_equals_brute_force(n, k):
    snr = torch.rand(n, generator=torch.Generator().manual_seed(n * k), dtype=torch.float64).mul(8).exp()
    values = snr.tolist()  # any order: the cost does not assume a monotone SNR
    best = min(all_splits(n, k), key=lambda e: ant_snr_objective(values, e))
    found = snr_intervals(snr, k)
    assert ant_snr_objective(values, found) == pytest.approx(ant_snr_objective(values, best), rel=1e-12)
    assert found == best


def test_ant_snr_clustering_of_the_linear_schedule():
    # ANT's objective on the linear schedule, T = 1000, k = 4
    snr = GaussianDiffusion(1000, "linear").snr(torch.arange(1000))
    assert snr_intervals(snr, 4) == [0, 1, 4, 16, 1000]
    assert snr_intervals(snr, 4, "ant_snr") == [0, 1, 4, 16, 1000]
    # the log-SNR variance is another objective with another optimum
    assert snr_intervals(snr, 4, "log_snr_variance") == [0, 150, 486, 770, 1000]


@pytest.mark.parametrize(("n", "k"), [(9, 2), (9, 3), (10, 4), (8, 8)])
def test_log_snr_variance_clustering_equals_brute_force(n, k):
    snr = (
        torch.rand(n, generator=torch.Generator().manual_seed(n * k), dtype=torch.float64)
        .mul(8)
        .sort(descending=True)
        .values.exp()
    )
    log_snr = snr.log()
    best = min(all_splits(n, k), key=lambda e: snr_spread(log_snr, e))
    found = snr_intervals(snr, k, objective="log_snr_variance")
    assert snr_spread(log_snr, found) == pytest.approx(snr_spread(log_snr, best), abs=1e-9)
    assert found == best


def test_unknown_snr_objective_is_one_line():
    with pytest.raises(DTRLabError, match="objective='ant' is unknown; choose one of ant_snr, log_snr_var"):
        snr_intervals(torch.linspace(10, 1, 10), 2, objective="ant")


@pytest.mark.parametrize(("n", "k"), [(9, 2), (9, 3), (10, 4), (7, 7)])
def test_affinity_clustering_equals_brute_force(n, k):
    affinity = torch.randn(n, n, generator=torch.Generator().manual_seed(n + k), dtype=torch.float64)
    best = max(all_splits(n, k), key=lambda e: centre_affinity(affinity, e))
    found = affinity_intervals(affinity, k)
    assert centre_affinity(affinity, found) == pytest.approx(centre_affinity(affinity, best), abs=1e-9)
    assert found == best


def test_block_diagonal_affinity_gives_the_blocks():
    sizes = [3, 6, 2, 5]
    block = torch.repeat_interleave(torch.arange(4), torch.tensor(sizes))
    noise = 0.05 * torch.randn(16, 16, generator=torch.Generator().manual_seed(0))
    affinity = torch.where(block[:, None] == block[None, :], 0.9, 0.1) + noise
    assert affinity_intervals(affinity, 4) == [0, 3, 9, 11, 16]


def test_snr_clustering_at_full_scale_is_fast_and_beats_uniform():
    snr = GaussianDiffusion(1000, "linear").snr(torch.arange(1000))
    start = time.perf_counter()
    edges = snr_intervals(snr, 5, "log_snr_variance")
    assert time.perf_counter() - start < 10.0
    assert (
        edges[0] == 0 and edges[-1] == 1000 and all(b > a for a, b in zip(edges[:-1], edges[1:], strict=True))
    )
    log_snr = snr.double().log()
    assert snr_spread(log_snr, edges) < snr_spread(log_snr, [0, 200, 400, 600, 800, 1000])


def test_bad_clustering_input():
    with pytest.raises(DTRLabError, match="k=1"):
        snr_intervals(torch.linspace(10, 1, 10), 1)
    with pytest.raises(DTRLabError, match="k=5 is more than the 3 units"):
        affinity_intervals(torch.eye(3), 5)
    nan = torch.eye(4)
    nan[1, 2] = torch.nan
    with pytest.raises(DTRLabError, match="NaN"):
        affinity_intervals(nan, 2)
    with pytest.raises(DTRLabError, match="square"):
        affinity_intervals(torch.ones(3, 4), 2)


# --- the command line ---


def write_run(run_dir, matrices: dict[int, torch.Tensor], edges: list[int]) -> None:
    records = run_dir / "records"
    records.mkdir(parents=True)
    rows = ["step,metric,i,j,value"]
    for step, m in matrices.items():
        rows += [f"{step},cos,{i},{j},{float(m[i, j])}" for i in range(len(m)) for j in range(len(m))]
        rows.append(f"{step},neg_share,,,0.25")
    (records / "conflict.csv").write_text("\n".join(rows) + "\n")
    spans = ["name,k,start,end"] + [f"conflict,{k},{edges[k]},{edges[k + 1]}" for k in range(len(edges) - 1)]
    spans += ["loss_by_t,0,0,500", "loss_by_t,1,500,1000"]
    (records / "intervals.csv").write_text("\n".join(spans) + "\n")


def blocks(sizes: list[int]) -> torch.Tensor:
    block = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return torch.where(block[:, None] == block[None, :], 1.0, -0.2)


FINE_EDGES = [0, 100, 200, 300, 400, 500, 600, 700, 800]


def test_cli_clusters_the_later_half_into_a_yaml_snippet(main, tmp_path, capsys):
    write_run(tmp_path, {100: blocks([4, 4]), 200: blocks([2, 3, 3])}, FINE_EDGES)
    intervals_csv = tmp_path / "records" / "intervals.csv"
    resumed = [line for line in intervals_csv.read_text().splitlines() if line.startswith("conflict,")]
    intervals_csv.write_text(
        intervals_csv.read_text() + "\n".join(resumed) + "\n"
    )  # as a resumed run appends
    assert main([str(tmp_path), "--k", "3"]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out) == {"intervals": {"boundaries": [0, 200, 500, 800]}}
    assert main([str(tmp_path), "--k", "2", "--step", "100"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == {"intervals": {"boundaries": [0, 400, 800]}}


def test_cli_reads_the_matrix_affinity_routing_reads(main, tmp_path, capsys):
    """Three measurements: the untrained step 0 is left out, the later two averaged (runs.read_affinity)."""
    write_run(tmp_path, {0: blocks([2, 6]), 100: blocks([4, 4]), 200: blocks([4, 4])}, FINE_EDGES)
    assert main([str(tmp_path), "--k", "2"]) == 0
    out = capsys.readouterr().out
    assert "the later half of its steps" in out
    assert yaml.safe_load(out) == {"intervals": {"boundaries": [0, 400, 800]}}
    assert main([str(tmp_path), "--k", "2", "--step", "0"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == {"intervals": {"boundaries": [0, 200, 800]}}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--timesteps", "0", "--k", "2"], "error: --timesteps=0 must be at least 2 (T, the steps to split)"),
        (["--timesteps", "3", "--k", "4"], "error: --k=4 is more than --timesteps=3; lower --k"),
    ],
)
def test_cli_snr_mode_names_the_option_out_of_range(main, capsys, args, message):
    assert main(["--snr", *args]) == 2
    assert capsys.readouterr().err == message + "\n"


def test_cli_snr_mode(main, capsys):
    assert main(["--snr", "--timesteps", "100", "--schedule", "cosine", "--k", "4"]) == 0
    snr = GaussianDiffusion(100, "cosine").snr(torch.arange(100))
    assert yaml.safe_load(capsys.readouterr().out) == {"intervals": {"boundaries": snr_intervals(snr, 4)}}
    assert main(["--snr", "--k", "4", "--objective", "log_snr_variance"]) == 0
    out = capsys.readouterr().out
    assert "least log_snr_variance" in out
    assert yaml.safe_load(out) == {"intervals": {"boundaries": [0, 150, 486, 770, 1000]}}
    assert main(["--snr", "--k", "4"]) == 0  # ANT's objective by default
    assert yaml.safe_load(capsys.readouterr().out) == {"intervals": {"boundaries": [0, 1, 4, 16, 1000]}}
    with pytest.raises(SystemExit) as exit_info:
        main(["--snr", "--k", "4", "--objective", "nope"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument --objective: invalid choice") and err.count("\n") == 1


def nan_matrix() -> torch.Tensor:
    m = blocks([4, 4])
    m[2, 3] = torch.nan
    return m


@pytest.mark.parametrize(
    ("args", "matrices", "match"),
    [
        (["--k", "3"], None, "conflict.csv does not exist"),
        (["--k", "1"], {1: blocks([4, 4])}, "--k=1"),
        (["--k", "9"], {1: blocks([4, 4])}, "--k=9 is more than the 8"),
        (["--k", "2"], {1: nan_matrix()}, "NaN"),
        (["--k", "2", "--metric", "tag"], {1: blocks([4, 4])}, "metric 'tag'"),
        (["--k", "2", "--step", "7"], {1: blocks([4, 4])}, "step=7"),
        (["--k", "2"], {1: blocks([3, 4])}, "does not give the 7 intervals"),
        (["--k", "2", "--metric", "neg_share"], {1: blocks([4, 4])}, "not a matrix"),
        (["--k", "2", "--records", "affinity"], {1: blocks([4, 4])}, "affinity.csv does not exist"),
    ],
)
def test_cli_bad_input_prints_one_error_line(main, tmp_path, capsys, args, matrices, match):
    if matrices is not None:
        write_run(tmp_path, matrices, FINE_EDGES)
    assert main([str(tmp_path), *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0]


def test_cli_rejects_an_empty_records_file(main, tmp_path, capsys):
    write_run(tmp_path, {1: blocks([4, 4])}, FINE_EDGES)
    (tmp_path / "records" / "intervals.csv").write_text("")
    assert main([str(tmp_path), "--k", "2"]) == 2
    assert "intervals.csv: empty (0 bytes" in capsys.readouterr().err


def test_cli_module_exits_2_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path), "--k", "3"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def test_the_old_module_command_points_to_the_script():
    """`python -m dtr_lab.mtl.clustering` (the command line before it moved) says where it went, exit 2.
    Python itself warns first that the package imported the module before running it (runpy)."""
    result = subprocess.run(
        [sys.executable, "-m", "dtr_lab.mtl.clustering", "runs/x", "--k", "3"], capture_output=True, text=True
    )
    assert result.returncode == 2 and result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if "RuntimeWarning" not in line]
    assert lines == [
        "error: python -m dtr_lab.mtl.clustering moved to analysis/cluster_intervals.py, with the same "
        "options: python analysis/cluster_intervals.py RUN_DIR --k K (or --snr --k K)"
    ]
