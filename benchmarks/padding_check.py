"""Scores of a trained run under today's padding vs the scores committed with it.

Until 2026-12-06 batches were padded on the left (positions counted from each row's first real
token); they are now padded on the right with the score read at each row's last real token. In
fp32 the two differ by summation order only; this re-scores the first N rows of a run's committed
test sample both ways in the same batches (a CoRA run) and prints the largest differences, also
against the committed scores (computed in other batches of the 2,000-row sample). Example (the committed Table 4 row CoRA-MF qkv):

    python benchmarks/padding_check.py runs/experiments/ml1m-modules/cora-mf-qkv \
        results/ml1m-modules/predictions/CoRA-MF-qkv.parquet --rows 200
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch

from cora.data.sampling import sample_users
from cora.eval.metrics import auc
from cora.llm.scoring import position_ids_for
from cora.llm.tokenize import left_pad
from cora.train.loop import predict
from cora.train.run import load_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("predictions", help="the committed predictions of the run's test sample")
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--limit", type=int, default=2000, help="the sample's --limit (ml1m-cpu: 2000)")
    ap.add_argument("--per-user", type=int, default=10)
    args = ap.parse_args()
    committed = pd.read_parquet(args.predictions)
    method, cfg, ds = load_run(args.run)
    df = sample_users(ds.split("test"), args.limit, seed=0, per_user=args.per_user).iloc[:args.rows]
    expected = committed.iloc[:args.rows]
    if not (df["uid"].to_numpy() == expected["uid"].to_numpy()).all():
        raise SystemExit("the committed predictions are not this sample's rows, in order")
    t0 = time.time()
    encoded = method.encode(df, ds.domain)
    scores = predict(method, encoded, cfg.eval_batch_size)
    left = left_padded_scores(method, encoded, cfg.eval_batch_size)
    diff = np.abs(scores - expected["score"].to_numpy())
    same_batches = np.abs(scores - left)
    print(f"{args.run}: {len(df)} rows re-scored in {time.time() - t0:.0f} s ({cfg.dtype}); scores span "
          f"{scores.min():.3f} .. {scores.max():.3f}\n"
          f"  right vs left padding, the same batches:        max {same_batches.max():.2e}, mean {same_batches.mean():.2e}\n"
          f"  today vs committed (other batches, other code): max {diff.max():.2e}, mean {diff.mean():.2e}\n"
          f"  AUC of these rows: today {auc(df['label'], scores):.6f}, committed {auc(df['label'], expected['score']):.6f}")


@torch.no_grad()
def left_padded_scores(method, split, batch_size: int) -> np.ndarray:
    """The scoring path before 2026-12-06: left padding, positions from each row's first real
    token, the score at the last column; batches formed as :func:`predict` forms them."""
    method.eval()
    order = np.argsort(split.lengths, kind="stable")
    out = np.zeros(len(split))
    head = method.llm.get_output_embeddings().weight[method.yes_token_id].float()
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size].tolist()
        batch = method.collate(split, rows)
        ids, mask = left_pad([split.input_ids[r] for r in rows], method.pad_token_id)
        with method.adapter.weights(method.collaborative_weights(batch)):
            hidden = method.llm.get_decoder()(input_ids=ids, attention_mask=mask, position_ids=position_ids_for(mask),
                                              use_cache=False).last_hidden_state[:, -1]
        out[rows] = (hidden.float() @ head - method.logit_offset).numpy()
    return out


if __name__ == "__main__":
    main()
