"""The alias-following, hot-swapped model both served models share (`service.hotswap`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from inkwell.errors import InkwellError, ModelNotFoundError
from inkwell.registry import Registry
from inkwell.settings import STABLE, CoreSettings
from service.cheques import ChequeModel
from service.hotswap import AliasFollowingModel
from service.model import DigitModel


@dataclass(frozen=True)
class Snapshot:
    version: str


class TableModel(AliasFollowingModel[Snapshot]):
    """A served model whose registry is a table of aliases (a fake registry, not a mock)."""

    def __init__(self, settings: CoreSettings, variant: str) -> None:
        super().__init__(settings, variant)
        self.aliases: dict[str, str] = {}
        self.broken: set[str] = set()
        self.loads = 0

    @property
    def name(self) -> str:
        return "table"

    def resolve(self, registry: Registry) -> tuple[str, str]:
        for alias in (self.variant, STABLE):
            if alias in self.aliases:
                return alias, self.aliases[alias]
        raise ModelNotFoundError("no version yet")

    def load_version(self, registry: Registry, version: str) -> Snapshot:
        self.loads += 1
        return Snapshot(version)

    def warm_up(self, candidate: Snapshot) -> None:
        if candidate.version in self.broken:
            raise InkwellError("bad warm-up", code="model_load_failed")


@pytest.fixture
def model(tmp_path: Path) -> TableModel:
    return TableModel(CoreSettings(home=tmp_path, data_dir=tmp_path / "data"), "canary")


def test_missing_version_is_returned_not_raised_and_not_ready(model: TableModel) -> None:
    outcome = model.refresh()
    assert not model.ready and outcome.version is None
    assert isinstance(outcome.error, ModelNotFoundError)


def test_swaps_only_when_the_alias_moves_and_records_the_alias(model: TableModel) -> None:
    model.aliases[STABLE] = "1"
    assert model.refresh().swapped and model.version == "1" and model.alias == STABLE
    first = model.current
    assert not model.refresh().swapped and model.current is first and model.loads == 1
    model.aliases["canary"] = "2"
    assert model.refresh().swapped and (model.version, model.alias) == ("2", "canary")


def test_a_version_failing_warm_up_never_serves_and_the_last_good_one_stays(
    model: TableModel,
) -> None:
    model.aliases[STABLE] = "1"
    model.refresh()
    model.aliases[STABLE] = "2"
    model.broken.add("2")
    outcome = model.refresh()
    assert not outcome.swapped and outcome.error is not None and model.version == "1"


def test_digit_and_cheque_models_share_the_one_swap() -> None:
    assert issubclass(DigitModel, AliasFollowingModel)
    assert issubclass(ChequeModel, AliasFollowingModel)
