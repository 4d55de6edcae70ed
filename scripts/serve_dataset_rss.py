"""Peak memory of the dataset part of loading a run for `cora serve` (docs/own-data.md's table).

`cora serve RUN` builds, besides the model, what :class:`cora.serve.recommend.Recommender` takes
from the run's dataset: the catalog (every user's history now, titles, the items each user has
seen) and the popularity of the training positives. This script builds exactly those from a
dataset folder, without a model, and prints the process's peak resident memory.

    OMP_NUM_THREADS=1 python scripts/serve_dataset_rss.py data/my-movies
"""

from __future__ import annotations

import argparse
import resource

import numpy as np

from cora.data.store import load_dataset
from cora.serve.catalog import Catalog


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="a cora dataset folder")
    args = parser.parse_args()
    ds = load_dataset(args.data)
    catalog = Catalog.from_dataset(ds)
    positives = ds.split("train").query("label == 1")["iid"].to_numpy(dtype=np.int64)  # Recommender's popularity
    print(f"{len(catalog.histories):,} users, {len(catalog.titles):,} items, {len(positives):,} train positives")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
