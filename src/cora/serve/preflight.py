"""A run opened without its model, so a serving command fails on a wrong id before loading it.

Loading a run (torch, the backbone, the weights) takes ~30 s on a CPU; the dataset's id maps are
read in milliseconds and its tables (the catalog) in seconds. ``cora recommend``, ``cora score``
and ``cora serve`` therefore open the run here first: an unknown user or item (original or, with
``--internal-ids``, internal) is a one-line error before torch is even imported, and the catalog
built for the check is the one the loaded :class:`~cora.serve.recommend.Recommender` serves with.
Ids are looked up in the maps first (no table read), then in the catalog.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cora.config import LLMConfig, llm_run_config
from cora.data.store import Dataset, load_dataset
from cora.errors import CoraError
from cora.serve.catalog import Catalog
from cora.serve.ids import DatasetIds, identity_ids, internal_id, read_id_maps


@dataclass
class RunData:
    run: Path
    cfg: LLMConfig
    ds: Dataset
    maps: DatasetIds | None  # None: the dataset has no id maps (original = internal)
    _catalog: Catalog | None = field(default=None, repr=False)
    _identity: DatasetIds | None = field(default=None, repr=False)

    @classmethod
    def open(cls, run: str | Path) -> RunData:
        run = Path(run)
        cfg = llm_run_config(run, "serve an LLM run; give the CF run as --cf")
        ds = load_dataset(cfg.data)
        return cls(run, cfg, ds, read_id_maps(ds))

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = Catalog.from_dataset(self.ds)
        return self._catalog

    @property
    def ids(self) -> DatasetIds:
        if self.maps is not None:
            return self.maps
        if self._identity is None:
            self._identity = identity_ids(self.catalog)
        return self._identity

    def user(self, value, internal: bool = False) -> int:
        """The internal id of the user ``value`` (an original id, or internal ones with ``internal``)."""
        uid = internal_id("user", value) if internal else self.ids.users.internal(value)
        self.catalog.check_user(uid)
        return uid

    def item(self, value, internal: bool = False) -> int:
        iid = internal_id("item", value) if internal else self.ids.items.internal(value)
        self.catalog.check_item(iid)
        return iid

    def recommender(self, cf: str | Path | None = None, backbone=None, batch_size: int | None = None,
                    placement=None, say=lambda line: None):
        """The run loaded (the slow part), serving with this catalog and these ids; ``placement``
        (:class:`cora.serve.placement.Placement`) says where and in what precision."""
        from cora.serve.recommend import Recommender

        return Recommender.from_run(self.run, cf=cf, backbone=backbone, batch_size=batch_size,
                                    catalog=self.catalog, ids=self.ids, placement=placement, say=say)
