"""`python tests/sgd_cora.py ARGS` is `cora ARGS` with plain SGD in place of AdamW.

For tests that compare training across process counts: N processes reduce a gradient in
another float order than one process, a difference of a few ulps. AdamW divides each update
by sqrt(v), so wherever a gradient is near 0 it turns those ulps into parameter differences of
order lr (seen: 1e-5 on one AMD EPYC after three steps). SGD's update is linear in the gradient,
so the same ulps stay ulps times lr, and a tight tolerance still proves that both runs saw the
same rows and the same loss.
"""

import torch

import cora.train.loop as loop


def _sgd(method, cfg):
    # Momentum: a state the checkpoints must carry (its buffer is linear in the gradients too).
    return torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=cfg.lr, momentum=0.9)


loop._optimizer = _sgd

if __name__ == "__main__":
    from cora.cli import main

    main()
