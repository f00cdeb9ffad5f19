"""The models shipped in the package: present with their cards, and an empty registry is
seeded from them once (version 1, alias stable, tagged source=shipped) however many processes
start together."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from inkwell.registry import META_FILE, WEIGHTS_FILE, Registry
from inkwell.settings import STABLE, CoreSettings
from inkwell.shipped import SHIPPED_DIR, seed_registry, sha256_of, shipped_model
from tests.conftest import copy_mlflow_db

REPO = Path(__file__).resolve().parents[2]
MAX_BYTES = {"digits": 300_000, "cheques": 8_000_000}
REPRODUCE = {"digits": "inkwell train", "cheques": "inkwell cheques train"}


@pytest.mark.parametrize("kind", ["digits", "cheques"])
def test_shipped_model_is_small_and_its_card_names_data_command_and_sha256(kind: str) -> None:
    shipped = shipped_model(kind)
    assert shipped is not None, f"{SHIPPED_DIR / kind} lacks {WEIGHTS_FILE} or {META_FILE}"
    assert shipped.meta["kind"] == kind
    assert shipped.weights.stat().st_size <= MAX_BYTES[kind]
    card = (shipped.folder / "MODEL_CARD.md").read_text()
    assert sha256_of(shipped.weights) in card
    assert REPRODUCE[kind] in card and "MNIST" in card


def test_shipped_digit_model_is_the_base_recipe_compose_and_kubernetes_train() -> None:
    from inkwell.model import ModelConfig
    from inkwell.train import BASE_PEAK_LR
    from inkwell_app.cli import BASE_EPOCHS

    shipped = shipped_model("digits")
    assert shipped is not None
    meta = shipped.meta
    train = meta["train"]
    assert isinstance(train, dict) and isinstance(meta["config"], dict)
    assert (train["epochs"], train["optimizer"], train["lr"], train["seed"]) == (
        BASE_EPOCHS,
        "adam",
        BASE_PEAK_LR["adam"],
        0,
    )
    assert ModelConfig.from_dict(meta["config"]) == ModelConfig()


def test_package_data_includes_the_shipped_files() -> None:
    text = (REPO / "pyproject.toml").read_text()
    assert '"inkwell.shipped"' in text
    for pattern in ("*/weights.pt", "*/model.json", "*/MODEL_CARD.md"):
        assert pattern in text


def test_empty_registry_is_seeded_with_stable_v1_of_each_shipped_model(tmp_path: Path) -> None:
    settings = CoreSettings(home=tmp_path / "home", allow_download=False)
    seeded = seed_registry(settings)
    assert sorted(info.name for info in seeded) == ["inkwell-cheques", "inkwell-digits"]
    registry = Registry(settings)
    for kind, name in (("digits", "inkwell-digits"), ("cheques", "inkwell-cheques")):
        info = registry.get_version(name, STABLE)
        assert info.version == "1"
        shipped = shipped_model(kind)
        assert shipped is not None
        assert info.tags["source"] == "shipped"
        assert info.tags["sha256"] == shipped.sha256
    # a second start finds the versions and registers nothing
    assert seed_registry(settings) == []
    assert [v.version for v in registry.list_versions("inkwell-digits")] == ["1"]


@pytest.mark.slow
def test_seeded_digit_model_reads_mnist_test_as_its_card_says(
    tmp_path: Path, mnist_dir: Path, empty_mlflow_db: Path
) -> None:
    from inkwell.data import load_split
    from inkwell.train import split_tensors
    from inkwell.training import evaluate

    home = copy_mlflow_db(empty_mlflow_db, tmp_path / "home")  # an empty registry
    settings = CoreSettings(home=home, allow_download=False)
    seed_registry(settings, kinds=("digits",))
    loaded = Registry(settings).load_digit_model(STABLE)
    accuracy = evaluate(loaded.model, *split_tensors(load_split("test", mnist_dir))).accuracy
    assert accuracy >= 0.99
    assert abs(accuracy - float(loaded.meta["test_accuracy"])) < 1e-4


def test_registry_that_has_a_version_is_left_alone(tmp_path: Path, empty_mlflow_db: Path) -> None:
    import torch

    from inkwell.model import DigitNet, ModelConfig

    home = copy_mlflow_db(empty_mlflow_db, tmp_path / "home")  # an empty registry
    settings = CoreSettings(home=home, allow_download=False)
    registry = Registry(settings)
    with registry.start_run("own") as run:
        registry.register_digit_model(DigitNet(ModelConfig(width=4)), run.info.run_id)
    seeded = seed_registry(settings)
    assert [info.name for info in seeded] == ["inkwell-cheques"]
    versions = registry.list_versions("inkwell-digits")
    assert [v.version for v in versions] == ["1"] and "source" not in versions[0].tags
    assert torch.is_tensor(registry.load_digit_model("1").model.head[1].weight)


def test_nothing_is_seeded_when_the_package_ships_no_model(
    tmp_path: Path, empty_mlflow_db: Path
) -> None:
    home = copy_mlflow_db(empty_mlflow_db, tmp_path / "home")  # an empty registry
    settings = CoreSettings(home=home, allow_download=False)
    assert seed_registry(settings, root=tmp_path / "empty-package") == []
    assert Registry(settings).list_versions("inkwell-digits") == []


SEED = """
import sys, time
from pathlib import Path
from inkwell.settings import CoreSettings
from inkwell.shipped import seed_registry
settings = CoreSettings(home=Path(sys.argv[1]), tracking_uri=sys.argv[2], allow_download=False)
start = float(sys.argv[3])
while time.time() < start:
    time.sleep(0.01)
print(len(seed_registry(settings)))
"""


@pytest.mark.integration
@pytest.mark.slow
def test_processes_starting_together_register_each_model_once(tmp_path: Path) -> None:
    import time

    # two homes share one registry (the file lock serialises each home's two processes; the
    # homes reconcile through the registry), as components on two machines would
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    homes = [tmp_path / "a", tmp_path / "b"]
    Registry(CoreSettings(home=homes[0], tracking_uri=tracking)).experiment_id()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.time() + 8
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", SEED, str(home), tracking, str(start)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for home in homes * 2
    ]
    outputs = [p.communicate(timeout=240) for p in processes]
    assert all(p.returncode == 0 for p in processes), [err[-2000:] for _, err in outputs]
    registry = Registry(CoreSettings(home=homes[0], tracking_uri=tracking))
    for name in ("inkwell-digits", "inkwell-cheques"):
        versions = registry.list_versions(name)
        assert [v.version for v in versions] == ["1"], name
        assert versions[0].aliases == (STABLE,)
    assert sum(int(out.strip().splitlines()[-1]) for out, _ in outputs) == 2


def test_seeded_meta_records_source_and_sha256(tmp_path: Path, empty_mlflow_db: Path) -> None:
    home = copy_mlflow_db(empty_mlflow_db, tmp_path / "home")  # an empty registry
    settings = CoreSettings(home=home, allow_download=False)
    seed_registry(settings, kinds=("digits",))
    registry = Registry(settings)
    folder = registry.download(registry.get_version("inkwell-digits", STABLE), tmp_path / "dl")
    meta = json.loads((folder / META_FILE).read_text())
    shipped = shipped_model("digits")
    assert shipped is not None
    assert meta["source"] == "shipped" and meta["sha256"] == shipped.sha256
    assert sha256_of(folder / WEIGHTS_FILE) == shipped.sha256
