"""Where learned flow backends look for weights, and what they say when nothing is there."""

from __future__ import annotations

import pytest
import torch

from learned_flow_fixtures import load_layout, seeded_state_dict
from motionnft.flow import (
    RAFTFlow,
    WeightsNotFoundError,
    add_weight_folders,
    create_estimator,
    estimate_flow,
    find_weights,
    weight_folders,
)
from motionnft.flow.weights import WEIGHTS_ENV, load_weight_file, remove_weight_folders


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No environment folders, and a torch hub folder of our own."""
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path


@pytest.fixture(scope="module")
def raft_small_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "raft_small_C_T_V2-01064c6d.pth"
    torch.save(seeded_state_dict(load_layout("raft_small_torchvision"), 1), path)
    return path


def test_folders_are_searched_env_first_then_registered_then_torch_hub(isolated, monkeypatch):
    env_a, env_b, registered, dynamic = (isolated / n for n in ("env_a", "env_b", "registered", "dynamic"))
    monkeypatch.setenv(WEIGHTS_ENV, f"{env_a}:{env_b}")
    current = [dynamic]
    provider = lambda: list(current)  # noqa: E731 - a host's folder list, asked at every search
    add_weight_folders(registered, provider)
    add_weight_folders(registered)  # twice: no duplicate
    try:
        assert weight_folders() == [env_a, env_b, registered, dynamic, isolated / "torch_home" / "hub" / "checkpoints"]
        current.append(isolated / "later")
        assert isolated / "later" in weight_folders()
    finally:
        remove_weight_folders(registered, provider)
    assert registered not in weight_folders()


def test_the_first_expected_file_found_wins_in_preference_order(isolated):
    first, second = isolated / "first", isolated / "second"
    first.mkdir(), second.mkdir()
    (first / "b.pth").write_bytes(b"x")
    (second / "a.pth").write_bytes(b"x")
    # "a.pth" is preferred over "b.pth", wherever they are.
    assert find_weights("raft_large", ["a.pth", "b.pth"], folders=[first, second]) == second / "a.pth"
    assert find_weights("raft_large", ["c.pth", "b.pth"], folders=[first, second]) == first / "b.pth"


def test_a_name_is_looked_up_in_the_folders_and_a_path_is_taken_as_is(isolated):
    folder = isolated / "optical_flow"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "mine.pth").write_bytes(b"x")
    assert find_weights("raft_large", [], "sub/mine.pth", folders=[folder]) == folder / "sub" / "mine.pth"
    assert find_weights("raft_large", [], folder / "sub" / "mine.pth", folders=[]) == folder / "sub" / "mine.pth"


def test_missing_weights_name_every_folder_searched_and_every_expected_file(isolated):
    present, absent = isolated / "present", isolated / "absent"
    present.mkdir()
    with pytest.raises(WeightsNotFoundError) as caught:
        find_weights("unimatch", ["gmflow-a.pth", "gmflow-b.pth"], folders=[present, absent])
    message = str(caught.value)
    assert "flow backend 'unimatch' needs a weight file, and none was found" in message
    assert f"  - {present}\n" in message and f"  - {absent} (does not exist)" in message
    assert "  - gmflow-a.pth\n  - gmflow-b.pth" in message
    assert "models/optical_flow" in message and WEIGHTS_ENV in message
    with pytest.raises(FileNotFoundError, match=r"needs the weight file 'nope.pth'"):
        find_weights("unimatch", ["gmflow-a.pth"], "nope.pth", folders=[present])


def test_create_estimator_without_a_file_lists_the_backends_file_names(isolated, monkeypatch):
    monkeypatch.setenv(WEIGHTS_ENV, str(isolated / "empty"))
    with pytest.raises(WeightsNotFoundError) as caught:
        create_estimator("unimatch")
    message = str(caught.value)
    assert "gmflow-scale2-regrefine6-mixdata-train320x576-4e7b215d.pth" in message
    assert str(isolated / "empty") in message and str(isolated / "torch_home" / "hub" / "checkpoints") in message
    with pytest.raises(WeightsNotFoundError, match="raft_large_C_T_SKHT_V2-ff5fadd5.pth"):
        estimate_flow(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), backend="raft_large")


def test_a_file_in_a_searched_folder_is_found_by_its_expected_name(isolated, monkeypatch, raft_small_file):
    monkeypatch.setenv(WEIGHTS_ENV, str(raft_small_file.parent))
    estimator = create_estimator("raft_small", "fast")
    assert isinstance(estimator, RAFTFlow) and estimator.weights == raft_small_file.resolve()
    # torchvision's own download folder is searched too.
    monkeypatch.delenv(WEIGHTS_ENV)
    hub = isolated / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / raft_small_file.name).write_bytes(raft_small_file.read_bytes())
    assert create_estimator("raft_small", "accurate").weights == (hub / raft_small_file.name).resolve()


def test_weight_free_backends_refuse_weights_and_precisions():
    with pytest.raises(ValueError, match="flow backend 'dis' uses no weights, but weights='x.pth' was given"):
        create_estimator("dis", weights="x.pth")
    with pytest.raises(ValueError, match="flow backend 'dis' has no precision 'bf16': expected one of fp32"):
        create_estimator("dis", precision="bf16")
    assert create_estimator("dis", precision="fp32", device="cpu") is create_estimator("dis")


def test_checkpoint_files_are_unwrapped_and_validated(tmp_path):
    weights = {"a.weight": torch.ones(2)}
    for wrapper in ("model", "state_dict"):
        path = tmp_path / f"{wrapper}.pth"
        torch.save({wrapper: weights, "epoch": 3}, path)
        assert torch.equal(load_weight_file(path)["a.weight"], weights["a.weight"])
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="expected a state dict of tensors, got list"):
        load_weight_file(tmp_path / "list.pth")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_weight_file(tmp_path / "missing.pth")
