"""Profiles: the JSON format's checks, loading, scaling, and the hand-made profiles' sources
(asyncsgd/projection/profile.py, hardware.py)."""
from __future__ import annotations

import json

import pytest

from asyncsgd.projection.hardware import DEVICES, handmade_profile, layer_flops
from asyncsgd.projection.profile import ProfileError, builtin_profiles, load_profile, profile_from_dict

GOOD = {"name": "toy", "model": "mlp", "batch_size": 8,
        "layers": [{"name": "fc1", "tensors": [4000, 40], "forward_s": 0.001, "backward_s": 0.002, "update_s": 1e-4},
                   {"name": "fc2", "bytes": 400, "forward_s": 0.0005, "backward_s": 0.001}],
        "step": {"data_s": 0.0002, "update_all_s": 2e-4}, "memory": {"copy_s_per_byte": 1e-10},
        "slowdown": {"2": 1.05, "4": 2.1}}


def test_a_hand_written_profile_loads(tmp_path):
    path = tmp_path / "toy.json"
    path.write_text(json.dumps(GOOD))
    prof = load_profile(path)
    assert [l.nbytes for l in prof.layers] == [4040, 400]
    assert prof.layers[1].update_s == 0.0  # left out: counts as 0
    assert prof.compute_s == pytest.approx(0.001 + 0.002 + 0.0005 + 0.001 + 0.0002 + 2e-4)
    assert prof.slowdown_at(4) == 2.1 and prof.slowdown_at(2) == 1.05
    assert prof.slowdown_at(3) == 1.0  # not measured and no core count: no slowdown assumed


@pytest.mark.parametrize("change,message", [
    (lambda d: d.pop("layers"), "'layers' must be a non-empty list"),
    (lambda d: d["layers"][0].update(forward_s=-1), r"layers\[0\].forward_s must be a number >= 0"),
    (lambda d: d["layers"][1].pop("bytes"), r"layers\[1\] has neither tensors nor bytes"),
    (lambda d: d["layers"][0].pop("backward_s"), r"layers\[0\] has no backward_s"),
    (lambda d: d.update(flops=3), "unknown key"),
    (lambda d: d["step"].update(data_ms=1), "step has unknown key"),
    (lambda d: d["layers"].append(dict(d["layers"][0])), "appear more than once"),
    (lambda d: d.update(format="other/9"), "format"),
])
def test_bad_profiles_name_the_field(change, message):
    data = json.loads(json.dumps(GOOD))
    change(data)
    with pytest.raises(ProfileError, match=message):
        profile_from_dict(data, "bad.json")


def test_unreadable_and_unknown_profiles(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ProfileError, match="not valid JSON"):
        load_profile(tmp_path / "broken.json")
    with pytest.raises(ProfileError, match="no such profile file, and not a shipped profile"):
        load_profile(tmp_path / "missing.json")


def test_at_batch_scales_compute_not_bytes_or_updates():
    prof = profile_from_dict(GOOD)
    big = prof.at_batch(32)
    assert big.layers[0].forward_s == pytest.approx(0.004)
    assert big.layers[0].update_s == prof.layers[0].update_s
    assert big.nbytes == prof.nbytes
    assert prof.scaled(2).layers[1].backward_s == pytest.approx(0.002)


def test_layer_flops_of_alexnet_are_torchvisions():
    from asyncsgd.config import GROUPS
    from asyncsgd.models import build_model

    import torch

    with torch.device("meta"):
        model = build_model(GROUPS["model"]["alexnet"](), (3, 224, 224), 1000)
    rows = layer_flops(model, (3, 224, 224))
    # conv1: 2 x 3 x 11 x 11 x 64 outputs at 55 x 55
    assert rows[0][3] == pytest.approx(2 * 3 * 121 * 64 * 55 * 55)
    # fc6 (9216 -> 4096) and its gradient bytes (weights + bias, fp32)
    fc6 = next(r for r in rows if r[0] == "classifier.1")
    assert fc6[3] == 2 * 9216 * 4096 and sum(fc6[2]) == 4 * (9216 * 4096 + 4096)


def test_handmade_profiles_say_where_every_number_comes_from():
    prof = handmade_profile("alexnet", (3, 224, 224), 256, "sandybridge-2s")
    for key in ("peak_flops", "efficiency", "memory_bps"):
        assert key in prof.sources
    assert "assumption" in prof.sources["efficiency"]
    assert prof.nbytes == 4 * 61_100_840  # torchvision's AlexNet, every parameter once
    dev = DEVICES["sandybridge-2s"]
    flops = prof.measurements["forward_gflop_per_sample"] * 1e9
    assert prof.layers[0].forward_s + sum(l.forward_s for l in prof.layers[1:]) == pytest.approx(
        256 * flops / (dev.peak_flops * dev.efficiency))


def test_shipped_profiles_load():
    shipped = builtin_profiles()
    assert {"alexnet-b256-sandybridge", "googlenet-b32-p100"} <= set(shipped)
    for path in shipped.values():
        prof = load_profile(path)
        assert prof.source and prof.layers


def test_fill_from_takes_updates_at_the_runs_memory_speed():
    # the run's trace shows the fused update (1 ms) but no per-layer ones; the base profile, measured
    # when memory was 4x slower (fused 4 ms), has per-layer updates 3 and 2 ms: they come over at 1/4
    from asyncsgd.projection.measure import fill_from
    from asyncsgd.projection.profile import Layer, Profile

    run = Profile(layers=[Layer("a", [400], 1e-3, 2e-3), Layer("b", [800], 1e-3, 2e-3, update_s=5e-4)],
                  step={"update_all_s": 1e-3}, measurements={"world_size": 2})
    base = Profile(layers=[Layer("a", [400], 9e-3, 9e-3, 3e-3), Layer("b", [800], 9e-3, 9e-3, 2e-3)],
                   step={"update_all_s": 4e-3, "zero_grad_s": 1e-4}, memory={"copy_s_per_byte": 1e-10})
    filled = fill_from(run, base)
    # a's update from the base at the runs' speed; b keeps its own; compute stays the run's
    assert [l.update_s for l in filled.layers] == pytest.approx([0.75e-3, 5e-4])
    assert [l.forward_s for l in filled.layers] == [1e-3, 1e-3]
    assert filled.step == {"update_all_s": 1e-3, "zero_grad_s": 1e-4}
    # without a fused update in the run the base's per-layer updates come over as they are
    run.step = {}
    assert fill_from(run, base).layers[0].update_s == pytest.approx(3e-3)


def test_slowdown_is_the_slowest_copy_of_each_iteration():
    # 3 copies, alone 1 ms: in every iteration one of them takes 2 ms, a different one by turns.
    # Each copy's own median (1.5, 1.75, 1.75 ms) says 1.75x; a data-parallel step waits for
    # its slowest copy: 2x.
    from asyncsgd.projection.measure import lockstep_slowdown

    per_worker = [[1.5e-3] * 4, [1.5e-3, 1.5e-3, 2e-3, 2e-3], [2e-3, 2e-3, 1.5e-3, 1.5e-3]]
    assert lockstep_slowdown(per_worker, 1e-3) == pytest.approx(2.0)
    # a median over iterations: one outlier iteration does not move it
    per_worker[0][3] = 9e-3
    assert lockstep_slowdown(per_worker, 1e-3) == pytest.approx(2.0)
    # copies that ran different numbers of iterations are compared over the ones all ran
    assert lockstep_slowdown([[1e-3, 3e-3, 3e-3], [1.5e-3]], 1e-3) == pytest.approx(1.5)
