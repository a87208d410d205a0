"""Sampling's declared interface (dtr_lab.samples.Sampled): the module provides all it reads, and
generate's batches draw x_T from generators seeded seed + b, worked out by hand."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import torch
from helpers import tiny_module

import dtr_lab.samples
from dtr_lab.samples import Sampled, SamplingOptions, generate


def test_the_module_provides_everything_sampling_reads():
    module = tiny_module()
    assert set(SamplingOptions.__annotations__) <= set(module.hparams)  # the options, by their config names
    for name in set(Sampled.__annotations__) - {"trainer"}:  # trainer: only while one is attached
        assert hasattr(module, name), name
    assert module._trainer is None and callable(module.sample)


class Identity:
    """A stand-in module whose sampler returns x_T itself: what generate drew is what it returns."""

    hparams = SimpleNamespace(in_channels=2, image_size=3)
    device = torch.device("cpu")

    def sample(self, noise, y=None, generator=None, **options):
        return noise


def test_each_batch_draws_its_x_t_from_a_generator_seeded_seed_plus_b():
    out = generate(Identity(), None, 5, seed=3, batch_size=2)
    # batches of 2, 2 and 1 sample from generators seeded 3, 4 and 5
    batches = ((2, 3), (2, 4), (1, 5))
    expected = [torch.randn(n, 2, 3, 3, generator=torch.Generator().manual_seed(s)) for n, s in batches]
    assert torch.equal(out, torch.cat(expected))
    decoded = generate(Identity(), None, 5, seed=3, batch_size=2, decode=lambda x: 2 * x)
    assert torch.equal(decoded, 2 * out)  # the data module's decoder applied to every batch


def test_samples_py_reads_only_what_it_declares():
    """Every attribute samples.py reads of a module (self, pl_module) is a member of Sampled, and every
    option (hparams.X, or hp.X with hp = the hparams) a member of SamplingOptions."""
    source = Path(dtr_lab.samples.__file__).read_text()
    module_reads, option_reads = set(), set()
    # the functions and the Sampling mixin; other classes (the predict sampler) have a `self` of their own
    scopes = [n for n in ast.parse(source).body if not isinstance(n, ast.ClassDef) or n.name == "Sampling"]
    for node in (inner for scope in scopes for inner in ast.walk(scope)):
        if not isinstance(node, ast.Attribute):
            continue
        owner = ast.unparse(node.value)
        if owner in ("self", "pl_module"):
            module_reads.add(node.attr)
        elif owner in ("hp", "self.hparams", "pl_module.hparams"):
            option_reads.add(node.attr)
    assert module_reads - {"hparams"} and option_reads  # the walk finds the reads
    methods = {name for name, value in vars(Sampled).items() if callable(value) and not name.startswith("__")}
    assert module_reads <= set(Sampled.__annotations__) | methods
    assert option_reads <= set(SamplingOptions.__annotations__)
